// The same-origin attack of issue 9 in headless Debian Chromium (tests/browser.rs starts the hub,
// the proxy and the servers, and writes bob's page, then runs this script):
//
//   bob logs in (dev login) and starts his server, which serves a page he wrote (a static file of
//   his JupyterLab: bob's ~/.jupyter config adds his ~/www to its static paths). The admin logs in
//   (dev login with the admin password) and opens bob's page. Its script fetches the hub's
//   /hub/home with whatever cookies the browser sends, reads the `_xsrf` of its forms and sends
//   PATCH /hub/api/users/bob {"admin": true} with it. The script then writes what it got into the
//   page, which this script prints as `RESULT {...}`; tests/browser.rs asks the hub's API whether
//   bob became an admin.
//
// Prints `ok <step>` per step; on failure `FAILED <step>: <reason>` (a screenshot
// failed-attack-<step>.png in $SCREENSHOT_DIR) and exits 1.
//
// Environment:
//   ATELIER_URL      the hub's public URL through the proxy (http://127.0.0.1:P)
//   ATTACK_URL       bob's page (in user-domain mode on bob's host)
//   ADMIN_USER       the admin's name; ADMIN_PASSWORD its dev-login password
//   USER_B           bob
//   HOST_RULES       Chromium's --host-resolver-rules (empty: none)
//   SCREENSHOT_DIR   where a failure's screenshot goes
//   CHROMIUM         the browser (default /usr/bin/chromium)
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (v === undefined || v === '') {
    console.error(`FAILED setup: ${name} is not set`);
    process.exit(2);
  }
  return v;
};
const SITE = env('ATELIER_URL').replace(/\/$/, '');
const ATTACK_URL = env('ATTACK_URL');
const ADMIN = env('ADMIN_USER');
const ADMIN_PASSWORD = env('ADMIN_PASSWORD');
const B = env('USER_B');
const SHOTS = env('SCREENSHOT_DIR');
const HOST_RULES = process.env.HOST_RULES ?? '';
mkdirSync(SHOTS, { recursive: true });

let step = 'setup';
let current = null;
const ok = (name, detail) => console.log(`ok ${name}${detail ? ` (${detail})` : ''}`);
const check = (condition, message) => { if (!condition) throw new Error(message); };

/// The dev login from a fresh context's page; lands on /hub/home.
async function devLogin(page, user, password) {
  step = `${user}: dev login`;
  await page.goto(`${SITE}/hub/login`);
  await page.locator('input[name=username]').fill(user);
  if (password) await page.locator('input[name=password]').fill(password);
  await Promise.all([
    page.waitForURL((url) => url.pathname === '/hub/home'),
    page.locator('form[action="/hub/login"] button[type=submit]').click(),
  ]);
  const who = (await page.locator('header .who').textContent())?.trim();
  check(who === user, `the header names ${JSON.stringify(who)}, not ${user}`);
  ok(step);
}

const args = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
if (HOST_RULES) args.push(`--host-resolver-rules=${HOST_RULES}`);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args,
});

try {
  // ---- bob starts his server ----------------------------------------------------------------
  const ctxB = await browser.newContext();
  const pageB = await ctxB.newPage();
  current = pageB;
  await devLogin(pageB, B, '');
  step = `${B}: starts his server and lands in JupyterLab`;
  await pageB.goto(`${SITE}/hub/spawn/${B}`);
  await Promise.all([
    pageB.waitForURL((url) => url.pathname.startsWith(`/user/${B}/lab`), { timeout: 120_000 }),
    pageB.locator('form.spawn button[type=submit]').click(),
  ]);
  ok(step, new URL(pageB.url()).host);
  await ctxB.close();

  // ---- the admin opens bob's page -------------------------------------------------------------
  const ctxA = await browser.newContext();
  const pageA = await ctxA.newPage();
  current = pageA;
  await devLogin(pageA, ADMIN, ADMIN_PASSWORD);
  step = `${ADMIN}: opens bob's page`;
  const resp = await pageA.goto(ATTACK_URL);
  check(resp.status() === 200, `GET ${ATTACK_URL}: ${resp.status()}`);
  await pageA.waitForFunction(() => document.getElementById('out')?.textContent !== '', null,
    { timeout: 30_000 });
  const result = JSON.parse(await pageA.locator('#out').textContent());
  ok(step, new URL(pageA.url()).host);
  console.log(`RESULT ${JSON.stringify(result)}`);
  // The admin is still logged in on the hub (the attack did not end the session either).
  step = `${ADMIN}: still logged in`;
  await pageA.goto(`${SITE}/hub/home`);
  check(new URL(pageA.url()).pathname === '/hub/home', `at ${pageA.url()}`);
  ok(step);
  console.log('PASSED');
} catch (e) {
  console.log(`FAILED ${step}: ${e.message.split('\n')[0]}`);
  if (current) {
    try {
      await current.screenshot({ path: join(SHOTS, `failed-attack-${step.replace(/[^a-z0-9]+/gi, '-')}.png`) });
    } catch { /* the page is gone */ }
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
