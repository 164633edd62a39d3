// The single sign-on story in headless Debian Chromium (tests/browser.rs starts the hub, the
// proxy and the OpenID provider, then runs this script):
//
//   A logs in through the provider, sees exactly the profiles A's groups allow, starts one,
//   watches the progress bar, lands in JupyterLab and runs a cell; B (a fresh browser context)
//   logs in, does not see A's profile, gets 403 posting it through the REST API with a token
//   made on the tokens page, and cannot open /user/<A>/; A looks at the admin page, logs out,
//   and /hub/home asks for a login again.
//
// Prints `ok <step>` per step; on failure prints `FAILED <step>: <reason>`, saves a screenshot
// of the failing page as failed-<step>.png and exits 1. Screenshots login.png, spawn.png,
// progress.png, lab.png, home.png, admin.png land in $SCREENSHOT_DIR.
//
// Environment:
//   ATELIER_URL      the proxy's public URL (http://127.0.0.1:P)
//   HUB_URL          the hub's own URL (checked to answer; the browser only uses ATELIER_URL)
//   OIDC_ISSUER      the provider's issuer URL
//   SCREENSHOT_DIR   where the screenshots go
//   USER_A, USER_B   login names at the provider (alice, bob)
//   PROFILES_A       comma-separated: exactly the profiles A's spawn form lists; A starts the first
//   PROFILES_B       comma-separated: exactly the profiles B's spawn form lists (both empty: a
//                    hub without profiles, whose form lists its default)
//   CHROMIUM         the browser (default /usr/bin/chromium)
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, request } from 'playwright-core';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') {
    console.error(`FAILED setup: ${name} is not set`);
    process.exit(2);
  }
  return v;
};
const list = (v) => v.split(',').map((s) => s.trim()).filter(Boolean);

const SITE = env('ATELIER_URL').replace(/\/$/, '');
const HUB = env('HUB_URL').replace(/\/$/, '');
const ISSUER = env('OIDC_ISSUER').replace(/\/$/, '');
const SHOTS = env('SCREENSHOT_DIR');
const A = env('USER_A');
const B = env('USER_B');
// Empty: a hub without profiles, whose form lists its default (value "").
const profiles = (name) => {
  const names = list(process.env[name] ?? '');
  return names.length ? names : [''];
};
const PROFILES_A = profiles('PROFILES_A');
const PROFILES_B = profiles('PROFILES_B');
const PROFILE_A = PROFILES_A[0];
const SPAWN_TIMEOUT = 120_000;

mkdirSync(SHOTS, { recursive: true });

let step = 'setup';
let current = null; // the page a failure screenshot shows

function ok(name, detail) {
  console.log(`ok ${name}${detail ? ` (${detail})` : ''}`);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, name), fullPage: true });
}

const sameSet = (a, b) => a.length === b.length && [...a].sort().every((v, i) => v === [...b].sort()[i]);

/// Logs `user` in from a fresh context: /hub/home → the hub's login page → the provider's
/// button → the provider's development form → back on the hub's home page.
async function login(page, user, screenshot) {
  step = `${user}: /hub/home asks for a login`;
  await page.goto(`${SITE}/hub/home`);
  check(new URL(page.url()).pathname === '/hub/login',
    `expected the login page, at ${page.url()}`);
  const button = page.locator('a[data-provider]');
  check(await button.count() === 1, `one provider button, found ${await button.count()}`);
  check(await page.locator('input[name=username]').count() === 0, 'no dev login form');
  if (screenshot) await shot(page, 'login.png');
  ok(step);

  step = `${user}: the provider's login form`;
  await button.click();
  await page.waitForURL((url) => url.href.startsWith(`${ISSUER}/`));
  await page.locator('input[name=login]').fill(user);
  await page.locator('input[name=password]').fill('any password');
  ok(step, new URL(page.url()).pathname.replace(/[^/]+$/, '…'));

  step = `${user}: back on the hub, logged in`;
  await Promise.all([
    page.waitForURL((url) => url.href.startsWith(`${SITE}/hub/`) && url.pathname !== '/hub/oauth_callback/test'),
    page.locator('button[type=submit]').first().click(),
  ]);
  await page.waitForLoadState('load');
  check(new URL(page.url()).pathname === '/hub/home', `expected /hub/home, at ${page.url()}`);
  const who = (await page.locator('header .who').textContent())?.trim();
  check(who === user, `the header names ${JSON.stringify(who)}, not ${user}`);
  ok(step, page.url());
}

/// The profile names the user's spawn form lists (radio values).
async function spawnForm(page, user, expected, screenshot) {
  step = `${user}: the spawn form lists exactly ${expected.join(', ')}`;
  const resp = await page.goto(`${SITE}/hub/spawn/${user}`);
  check(resp.status() === 200, `GET /hub/spawn/${user}: ${resp.status()}`);
  const values = await page.locator('input[type=radio][name=profile]').evaluateAll(
    (els) => els.map((e) => e.value));
  check(sameSet(values, expected), `listed ${JSON.stringify(values)}, expected ${JSON.stringify(expected)}`);
  if (screenshot) await shot(page, 'spawn.png');
  ok(step);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

try {
  step = 'the hub answers';
  const version = await fetch(`${HUB}/hub/api/`);
  check(version.status === 200, `GET ${HUB}/hub/api/: ${version.status}`);
  ok(step, `JupyterHub API ${(await version.json()).version}, ${browser.version()}`);

  // ---- A ----------------------------------------------------------------------------------
  const ctxA = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  ctxA.setDefaultTimeout(30_000);
  // The progress bar's values and messages as the page shows them, across navigations.
  const progress = [];
  await ctxA.exposeBinding('__atelierProgress', (_source, value, message) => {
    progress.push({ value, message });
  });
  await ctxA.addInitScript(() => {
    document.addEventListener('DOMContentLoaded', () => {
      const el = document.querySelector('.progress[data-progress-url]');
      if (!el) return;
      const bar = el.querySelector('progress');
      const text = el.querySelector('.progress-message');
      const report = () => window.__atelierProgress(bar.value, text ? text.textContent : '');
      new MutationObserver(report).observe(el, {
        subtree: true, childList: true, characterData: true, attributes: true,
      });
      report();
    });
  });
  const pageA = await ctxA.newPage();
  current = pageA;
  await login(pageA, A, true);
  await spawnForm(pageA, A, PROFILES_A, true);

  step = `${A}: start ${PROFILE_A || 'the default profile'}, the progress bar advances`;
  await pageA.locator(`input[type=radio][name=profile][value="${PROFILE_A}"]`).check();
  const [started] = await Promise.all([
    pageA.waitForResponse((r) => r.request().method() === 'POST'
      && new URL(r.url()).pathname === `/hub/spawn/${A}`),
    pageA.locator('form button[type=submit].primary').click(),
  ]);
  if (started.status() !== 303) {
    await pageA.waitForLoadState('load');
    const alert = await pageA.locator('.alert').allTextContents();
    throw new Error(`the form's answer is ${started.status()}: ${alert.join(' ') || '(no alert)'}`);
  }
  await pageA.waitForURL((url) => url.pathname.startsWith(`/hub/spawn-pending/${A}`));
  await pageA.locator('.progress progress').waitFor({ state: 'attached' });
  try {
    await shot(pageA, 'progress.png');
  } catch (e) {
    console.log(`note: no progress.png, the page moved on (${e.message.split('\n')[0]})`);
  }
  await pageA.waitForURL((url) => url.pathname.startsWith(`/user/${A}/`), { timeout: SPAWN_TIMEOUT });
  const values = progress.map((p) => Number(p.value));
  const messages = [...new Set(progress.map((p) => p.message).filter(Boolean))];
  check(values.length > 0, 'the progress bar never reported');
  check(values.every((v, i) => i === 0 || v >= values[i - 1]), `progress went back: ${values}`);
  check(new Set(values).size >= 2 && values.at(-1) > values[0],
    `progress did not advance: ${values}`);
  ok(step, `values ${[...new Set(values)].join(' → ')}; messages: ${messages.join(' | ')}`);

  step = `${A}: JupyterLab runs a cell`;
  await pageA.locator('.jp-LabShell').waitFor({ timeout: 90_000 });
  const card = pageA.locator('.jp-LauncherCard[data-category="Notebook"]').first();
  await card.waitFor({ timeout: 60_000 });
  await card.click();
  const notebook = pageA.locator('.jp-NotebookPanel:not(.lm-mod-hidden)').last();
  const editor = notebook.locator('.jp-Cell.jp-CodeCell .cm-content').first();
  await editor.waitFor();
  // The kernel is up when the status bar says so: the toolbar's indicator shows "idle" for a
  // moment before the kernel even starts, and a cell run then is silently dropped.
  await pageA.waitForFunction(
    () => /\| Idle/.test(document.querySelector('#jp-main-statusbar')?.textContent || ''),
    null, { timeout: 60_000 });
  await editor.click();
  await pageA.keyboard.type('print(6*7)');
  await pageA.keyboard.press('Shift+Enter');
  const output = notebook.locator('.jp-OutputArea-output').first();
  await output.waitFor({ timeout: 60_000 });
  await pageA.waitForFunction(
    (el) => el.textContent.trim() === '42', await output.elementHandle(), { timeout: 60_000 });
  // The output can arrive before the execute reply that numbers the prompt ("[*]:" → "[1]:").
  const inputPrompt = notebook.locator('.jp-CodeCell .jp-InputPrompt').first();
  await pageA.waitForFunction(
    (el) => el.textContent.trim() !== '[*]:', await inputPrompt.elementHandle(), { timeout: 30_000 })
    .catch(() => {});
  const prompt = (await inputPrompt.textContent()).trim();
  check(prompt === '[1]:', `the cell's prompt is ${JSON.stringify(prompt)}`);
  await shot(pageA, 'lab.png');
  ok(step, `at ${new URL(pageA.url()).pathname}, output ${JSON.stringify((await output.textContent()).trim())}`);

  step = `${A}: home lists the running server`;
  await pageA.goto(`${SITE}/hub/home`);
  const row = pageA.locator('table.servers tbody tr').first();
  check(await row.locator('.state').textContent() === 'running',
    `state ${await row.locator('.state').textContent()}`);
  if (PROFILE_A) {
    const shown = (await row.locator('td').nth(2).textContent()).trim();
    check(shown === PROFILE_A, `profile column ${JSON.stringify(shown)}`);
  }
  await shot(pageA, 'home.png');
  ok(step);

  // ---- B ----------------------------------------------------------------------------------
  const ctxB = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  ctxB.setDefaultTimeout(30_000);
  const pageB = await ctxB.newPage();
  current = pageB;
  await login(pageB, B, false);
  await spawnForm(pageB, B, PROFILES_B, false);

  step = `${B}: a token from the tokens page`;
  await pageB.goto(`${SITE}/hub/token`);
  await pageB.locator('#note').fill('browser test');
  await Promise.all([
    pageB.waitForLoadState('load'),
    pageB.locator('form[action="/hub/token"] button[type=submit]').click(),
  ]);
  await pageB.locator('pre.token code').waitFor();
  const token = (await pageB.locator('pre.token code').textContent()).trim();
  check(token.length >= 32, `token ${JSON.stringify(token)}`);
  // The REST API with the token alone: no cookie of the browser goes along.
  const api = await request.newContext();
  const auth = { Authorization: `token ${token}` };
  const me = await api.get(`${SITE}/hub/api/user`, { headers: auth });
  check(me.status() === 200 && (await me.json()).name === B,
    `GET /hub/api/user with the token: ${me.status()} ${await me.text()}`);
  ok(step, 'GET /hub/api/user answers 200 with the token');

  step = `${B}: POST ${A}'s profile through the API → 403`;
  if (PROFILES_B.includes(PROFILE_A)) {
    console.log(`skip ${step}: ${B}'s form lists ${JSON.stringify(PROFILE_A)} too (a hub without profiles)`);
  } else {
    const posted = await api.post(`${SITE}/hub/api/users/${B}/servers/try`, {
      headers: auth, data: { profile: PROFILE_A }, maxRedirects: 0,
    });
    const body = await posted.text();
    check(posted.status() === 403, `got ${posted.status()}: ${body}`);
    check(JSON.parse(body).message.includes(PROFILE_A), `the refusal does not name the profile: ${body}`);
    const model = await api.get(`${SITE}/hub/api/users/${B}`, { headers: auth });
    check(model.status() === 200, `GET /hub/api/users/${B}: ${model.status()}`);
    const servers = (await model.json()).servers || {};
    check(!('try' in servers), `a server "try" exists after the 403: ${JSON.stringify(servers)}`);
    ok(step, body.trim());
  }

  step = `${B}: /user/${A}/ through the proxy does not reach ${A}'s server`;
  // The proxy checks the credential before forwarding (src/proxy/auth.rs): B's session cookie
  // and B's token hold no access to A's server, so it answers 403 itself.
  const session = ctxB.request; // B's browser cookies
  const refusals = [
    ['session cookie', await session.get(`${SITE}/user/${A}/`, {
      maxRedirects: 0, headers: { Accept: 'text/html' },
    })],
    ['token', await api.get(`${SITE}/user/${A}/api/contents`, { headers: auth, maxRedirects: 0 })],
  ];
  const said = [];
  for (const [what, r] of refusals) {
    const text = await r.text();
    check(r.status() === 403, `with ${what}: ${r.status()} ${r.headers().location || ''} ${text.slice(0, 200)}`);
    const type = r.headers()['content-type'] || '';
    if (what === 'session cookie') {
      // A page load gets a page (with a way back to the hub), not JSON.
      check(type.startsWith('text/html'), `with ${what}: ${type}`);
      check(text.includes(`You may not use the server ${A}.`) && text.includes('href="/hub/home"'),
        `with ${what}: ${text.slice(0, 300)}`);
      said.push(`${what}: 403 page`);
    } else {
      check(type.startsWith('application/json'), `with ${what}: ${type}`);
      const body = JSON.parse(text);
      check(body.status === 403 && body.message.includes(A), `with ${what}: ${text}`);
      said.push(`${what}: 403 ${JSON.stringify(body.message)}`);
    }
  }
  const opened = await pageB.goto(`${SITE}/user/${A}/`);
  check(opened.status() === 403, `the page answers ${opened.status()} at ${pageB.url()}`);
  check(new URL(pageB.url()).pathname === `/user/${A}/`, `the page moved to ${pageB.url()}`);
  check(await pageB.locator('.jp-LabShell, #jupyter-config-data').count() === 0,
    'JupyterLab content in the page');
  ok(step, said.join('; '));

  // ---- A again: admin page, logout ----------------------------------------------------------
  current = pageA;
  step = `${A}: the admin page lists ${A} (admin) and ${B}`;
  const admin = await pageA.goto(`${SITE}/hub/admin`);
  check(admin.status() === 200, `GET /hub/admin: ${admin.status()}`);
  const rows = await pageA.locator('table.users tbody tr td:first-child').allTextContents();
  const names = rows.map((t) => t.trim());
  check(names.some((n) => n.startsWith(A) && n.includes('admin')), `rows ${JSON.stringify(names)}`);
  check(names.some((n) => n === B), `rows ${JSON.stringify(names)}`);
  // The groups the hub derived from the provider's claims (B's from an AARC entitlement).
  const groups = Object.fromEntries(await pageA.locator('table.users tbody tr').evaluateAll(
    (trs) => trs.map((tr) => [tr.cells[0].textContent.trim().split(/\s/)[0], tr.cells[1].textContent.trim()])));
  check(groups[A] === 'ocean-physics', `${A}'s groups: ${groups[A]}`);
  check(groups[B] === 'vo.example.org, vo.example.org:role=member', `${B}'s groups: ${groups[B]}`);
  await shot(pageA, 'admin.png');
  ok(step);

  step = `${A}: logs out (the provider's logout too)`;
  await pageA.goto(`${SITE}/hub/home`);
  await Promise.all([
    pageA.waitForURL((u) => u.href.startsWith(`${ISSUER}/`)),
    pageA.locator('form.logout button[type=submit]').click(),
  ]);
  // oidc-provider asks whether to sign out of the provider too.
  await Promise.all([
    pageA.waitForURL((u) => u.href.startsWith(`${SITE}/hub/login`)),
    pageA.locator('button[name=logout][value=yes]').click(),
  ]);
  ok(step, new URL(pageA.url()).pathname);

  step = `${A}: /hub/home asks for a login again`;
  await pageA.goto(`${SITE}/hub/home`);
  check(new URL(pageA.url()).pathname === '/hub/login', `at ${pageA.url()}`);
  check(await pageA.locator('a[data-provider]').count() === 1, 'no provider button');
  check(await pageA.locator('header .who').count() === 0, 'still names a user');
  ok(step);

  await browser.close();
  console.log('PASSED');
} catch (err) {
  console.log(`FAILED ${step}: ${err.message.split('\n').slice(0, 6).join(' | ')}`);
  if (current) {
    const name = `failed-${step.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 60)}.png`;
    try {
      await shot(current, name);
      console.log(`  at ${current.url()}; screenshot ${join(SHOTS, name)}`);
    } catch (e) {
      console.log(`  no screenshot: ${e.message.split('\n')[0]}`);
    }
  }
  await browser.close().catch(() => {});
  process.exit(1);
}
