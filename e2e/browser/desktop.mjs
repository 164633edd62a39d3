// The QGIS desktop in headless Debian Chromium (tests/desktop_qgis.rs starts the hub and the
// proxy, then runs this script):
//
//   the user logs in (dev login), starts the QGIS profile from the spawn form, opens the desktop
//   at /user/<user>/desktop/ and waits until noVNC says Connected over the proxied WebSocket
//   (/user/<user>/desktop-websockify/); then waits for the test to see QGIS's main window inside
//   the workspace (the file $QGIS_SEEN appears), until the canvas shows more than a plain
//   background, and saves the desktop.
//
// Prints `ok <step>` per step, `canvas <json>` with the canvas's pixel statistics, then PASSED;
// on failure `FAILED <step>: <reason>`, a screenshot failed-<step>.png, and exits 1.
//
// Environment:
//   ATELIER_URL      the proxy's public URL (http://127.0.0.1:P)
//   USER_NAME        the user (dev login: any name)
//   PROFILE          the QGIS profile's name on the spawn form
//   SCREENSHOT_DIR   where desktop.png (the page) and canvas.png (the remote screen) go
//   QGIS_SEEN        the file the test writes once it has seen QGIS's window
//   CHROMIUM         the browser (default /usr/bin/chromium)
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`FAILED setup: ${name} is not set`);
    process.exit(2);
  }
  return v;
};
const SITE = env('ATELIER_URL').replace(/\/$/, '');
const USER = env('USER_NAME');
const PROFILE = env('PROFILE');
const SHOTS = env('SCREENSHOT_DIR');
const SEEN = env('QGIS_SEEN');
mkdirSync(SHOTS, { recursive: true });

let step = 'setup';
let page = null;
const ok = (name, detail) => console.log(`ok ${name}${detail ? ` (${detail})` : ''}`);
const check = (condition, message) => { if (!condition) throw new Error(message); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// Polls `probe` every 500 ms until it returns a truthy value, for at most `ms`.
async function until(what, ms, probe) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await probe();
    if (last && (last.done ?? true)) return last;
    await sleep(500);
  }
  throw new Error(`timed out after ${ms / 1000} s waiting for ${what}; last: ${JSON.stringify(last)}`);
}

/// Statistics of the noVNC canvas's pixels (a grid of samples): how many distinct colours and
/// the luminance's standard deviation. A blank (one-colour) screen has 1 and 0.
async function canvasStats() {
  return page.evaluate(() => {
    const canvas = document.querySelector('#screen canvas');
    if (!canvas || !canvas.width || !canvas.height) return null;
    const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
    const colours = new Set();
    let n = 0; let sum = 0; let sq = 0;
    for (let y = 0; y < canvas.height; y += 4) {
      for (let x = 0; x < canvas.width; x += 4) {
        const i = (y * canvas.width + x) * 4;
        const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
        colours.add((r << 16) | (g << 8) | b);
        const l = 0.299 * r + 0.587 * g + 0.114 * b;
        n += 1; sum += l; sq += l * l;
      }
    }
    const mean = sum / n;
    return {
      width: canvas.width,
      height: canvas.height,
      samples: n,
      colours: colours.size,
      stddev: Math.sqrt(Math.max(0, sq / n - mean * mean)),
    };
  });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

try {
  const ctx = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  ctx.setDefaultTimeout(30_000);
  page = await ctx.newPage();

  step = 'log in';
  await page.goto(`${SITE}/hub/login`);
  await page.locator('input[name=username]').fill(USER);
  await Promise.all([
    page.waitForURL((url) => url.pathname === '/hub/home'),
    page.locator('form[action="/hub/login"] button[type=submit]').click(),
  ]);
  ok(step, page.url());

  step = `start ${PROFILE} from the spawn form`;
  const resp = await page.goto(`${SITE}/hub/spawn/${USER}`);
  check(resp.status() === 200, `GET /hub/spawn/${USER}: ${resp.status()}`);
  const radio = page.locator(`input[type=radio][name=profile][value="${PROFILE}"]`);
  check(await radio.count() === 1, `the form lists ${PROFILE}`);
  await radio.check();
  await Promise.all([
    page.waitForURL((url) => url.pathname.startsWith(`/user/${USER}/`), { timeout: 150_000 }),
    page.locator('form.spawn button[type=submit]').click(),
  ]);
  ok(step, `landed on ${new URL(page.url()).pathname}`);

  step = 'open the desktop and connect over the proxied WebSocket';
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await page.goto(`${SITE}/user/${USER}/desktop/`);
  await until('noVNC to say Connected', 120_000, async () => {
    const status = (await page.locator('#status').textContent())?.trim();
    return { done: status === 'Connected', status };
  });
  const proxied = sockets.find((u) => new URL(u).pathname === `/user/${USER}/desktop-websockify/`);
  check(proxied && proxied.startsWith(SITE.replace(/^http/, 'ws')),
    `a WebSocket to the proxy's /user/${USER}/desktop-websockify/, saw ${JSON.stringify(sockets)}`);
  ok(step, proxied);
  console.log('connected');

  step = 'the test sees QGIS inside the workspace';
  await until(`${SEEN}`, 240_000, async () => existsSync(SEEN));
  ok(step);

  step = 'the canvas shows the desktop, not a blank screen';
  const stats = await until('the canvas to show more than a background', 120_000, async () => {
    const s = await canvasStats();
    return s && { ...s, done: s.colours >= 16 && s.stddev >= 10 };
  });
  await page.screenshot({ path: join(SHOTS, 'desktop.png') });
  await page.locator('#screen canvas').screenshot({ path: join(SHOTS, 'canvas.png') });
  console.log(`canvas ${JSON.stringify(stats)}`);
  ok(step, `${stats.colours} colours, luminance stddev ${stats.stddev.toFixed(1)}`);
  console.log('PASSED');
} catch (e) {
  console.log(`FAILED ${step}: ${e.message.split('\n')[0]}`);
  if (page) {
    await page.screenshot({ path: join(SHOTS, `failed-${step.replace(/[^a-z0-9]+/gi, '-')}.png`) })
      .catch(() => {});
  }
  await browser.close();
  process.exit(1);
}
await browser.close();
