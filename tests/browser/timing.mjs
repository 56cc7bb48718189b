// Page load times of the jobbox dashboard in headless Chromium, for
// `jobbox bench --dashboard`:
//
//     node tests/browser/timing.mjs <base-url> <token> <rounds> <path>...
//
// Loads each page <rounds> times (after one untimed load) and prints one
// line per page: its path, then each load's time in milliseconds from the
// start of navigation to the page's data drawn (`window.__jobbox.readyAt`,
// which the dashboard sets with `body[data-ready]`). Uses the Chromium at
// JOBBOX_CHROMIUM and the playwright-core in JOBBOX_BROWSER_NODE_MODULES
// (as scripts/test installs them); never downloads a browser.

import { createRequire } from 'node:module';
import path from 'node:path';

const [baseArg, token, roundsArg, ...paths] = process.argv.slice(2);
const rounds = Number(roundsArg);
if (!baseArg || !token || !(rounds > 0) || paths.length === 0) {
  console.error('usage: node timing.mjs <base-url> <token> <rounds> <path>...');
  process.exit(2);
}
const base = baseArg.replace(/\/+$/, '');
process.env.PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD = '1';
const modules = process.env.JOBBOX_BROWSER_NODE_MODULES
  || path.join(path.dirname(new URL(import.meta.url).pathname), 'node_modules');
const require = createRequire(path.join(modules, 'resolve-from-here.js'));
const { chromium } = require('playwright-core');

const browser = await chromium.launch({
  executablePath: process.env.JOBBOX_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  // The token, as the login form would leave it for the tab's session.
  await context.addInitScript((t) => sessionStorage.setItem('jobbox.token', t), token);
  const page = await context.newPage();
  const load = async (p) => {
    await page.goto(base + p, { waitUntil: 'commit' });
    await page.waitForFunction(
      () => document.body && document.body.dataset.ready && window.__jobbox
        && typeof window.__jobbox.readyAt === 'number',
      null,
      { timeout: 30_000, polling: 'raf' },
    );
    return page.evaluate(() => window.__jobbox.readyAt);
  };
  for (const p of paths) {
    await load(p);
    const times = [];
    for (let i = 0; i < rounds; i++) {
      times.push((await load(p)).toFixed(1));
    }
    console.log(`${p} ${times.join(' ')}`);
  }
} finally {
  await browser.close();
}
