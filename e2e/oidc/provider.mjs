// The OpenID provider of the hub's single sign-on tests (tests/oidc.rs): the npm
// `oidc-provider` (OpenID Certified) with its development login form, on 127.0.0.1.
//
//   node provider.mjs <port>
// Environment: OIDC_REDIRECT_URIS (comma-separated), OIDC_POST_LOGOUT_URIS (comma-separated),
// OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_BENCH_USERS (see below). Prints "ready" when listening.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || process.env.OIDC_PORT);
const list = (v) => (v || '').split(',').filter(Boolean);
const issuer = `http://127.0.0.1:${port}`;

// Any login name is accepted by the development form; these have claims.
const accounts = {
  alice: { preferred_username: 'alice', email: 'alice@uni.example.org', groups: ['ocean-physics'] },
  bob: {
    preferred_username: 'bob',
    email: 'bob@egi.example.org',
    eduperson_entitlement: ['urn:mace:egi.eu:group:vo.example.org:role=member#aai.egi.eu'],
  },
  carol: { preferred_username: 'carol', email: 'carol@uni.example.org', groups: ['elsewhere'] },
  // Another person whose preferred_username also normalises to "alice".
  'alice-other': { preferred_username: 'Alice', email: 'alice@other.example.org', groups: ['ocean-physics'] },
  // Hostile or confusable names (tests/oidc.rs, usernames_from_the_provider_*), all in the
  // allowed, non-admin group vo.example.org.
  dotdot: { preferred_username: '../evil', groups: ['vo.example.org'] },
  script: { preferred_username: '<script>alert(1)</script>', groups: ['vo.example.org'] },
  'cyrillic-admin': { preferred_username: '\u0430dmin', groups: ['vo.example.org'] }, // Cyrillic а
  'fullwidth-admin': { preferred_username: '\uff41\uff44\uff4d\uff49\uff4e', groups: ['vo.example.org'] },
  'combining-admin': { preferred_username: 'admin\u0301', groups: ['vo.example.org'] },
  'zwj-admin': { preferred_username: 'admin\u200d', groups: ['vo.example.org'] },
  'zwj-root': { preferred_username: 'root\u200d', groups: ['vo.example.org'] },
  // Exactly the names of accounts an admin creates beforehand (the claim rule).
  admin: { preferred_username: 'admin', groups: ['vo.example.org'] },
  dana: { preferred_username: 'Dana', groups: ['vo.example.org'] },
  'dana-other': { preferred_username: 'dana', groups: ['vo.example.org'] },
};

// The login benchmark's users (bench/login): `bench0` … `bench<N-1>` in group ocean-physics, with
// OIDC_BENCH_USERS=N (none otherwise).
const benchUsers = Number(process.env.OIDC_BENCH_USERS || 0);
const benchAccount = (id) => {
  const m = /^bench(\d+)$/.exec(id);
  if (!m || Number(m[1]) >= benchUsers) return undefined;
  return { preferred_username: id, email: `${id}@uni.example.org`, groups: ['ocean-physics'] };
};

// A new signing key at every start: a restart is a key rotation (new `kid`).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  jwks: { keys: [signingKey] },
  clients: [{
    client_id: process.env.OIDC_CLIENT_ID || 'atelier',
    client_secret: process.env.OIDC_CLIENT_SECRET || 'atelier-secret',
    redirect_uris: list(process.env.OIDC_REDIRECT_URIS),
    post_logout_redirect_uris: list(process.env.OIDC_POST_LOGOUT_URIS),
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name', 'groups', 'eduperson_entitlement'],
    email: ['email', 'email_verified'],
  },
  cookies: { keys: ['atelier-oidc-test-cookie-key'] },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  async findAccount(ctx, id) {
    const account = accounts[id] || benchAccount(id);
    if (!account) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...account }; } };
  },
  // Grant the requested scopes at once: no consent screen.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid profile email');
    grant.addOIDCClaims(['preferred_username', 'groups', 'eduperson_entitlement', 'email']);
    await grant.save();
    return grant;
  },
});

provider.listen(port, '127.0.0.1', () => console.log('ready'));
