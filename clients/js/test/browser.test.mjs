// The example page in headless Chromium (Debian's `chromium`, scripts/install-chromium.sh),
// driven by playwright-core: it connects through the library, shows what it receives, and
// survives gateway restarts (1001 and SIGKILL), a network cut and 1013s without losing or
// repeating a message (scenario.mjs), all read back from the page's DOM.

import { test } from 'node:test';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHANNEL, noLossScenario } from './scenario.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript' };

/** Serves clients/js read-only (the page and the library it imports). */
async function staticServer() {
  const server = http.createServer((req, res) => {
    const p = path.normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
    const file = path.join(root, p);
    if (!file.startsWith(root + path.sep) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
    res.end(readFileSync(file));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

test('the example page receives every message once across restarts, a cut and 1013s (Chromium)', async (t) => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: run scripts/install-chromium.sh (or set CHROMIUM)`);
  }
  const site = await staticServer();
  t.after(() => site.close());
  const profile = mkdtempSync(path.join(tmpdir(), 'gateway-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  t.after(async () => {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  });
  const page = await browser.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));

  await noLossScenario(async (url, token) => {
    const q = new URLSearchParams({ url, token, channel: CHANNEL });
    await page.goto(`${site.origin}/example/index.html?${q}`);
    await page.waitForSelector('#status[data-state=connected]', { timeout: 30_000 });
    await page.waitForFunction(() => [...document.querySelectorAll('#log li')].some((li) => li.textContent.includes('joined')));
    return {
      // What the page shows: each message's data.i, in the order of the list; a gap is shown too.
      received: () => page.evaluate(() => [
        ...[...document.querySelectorAll('#messages li')].map((li) => Number(li.dataset.i)),
        ...[...document.querySelectorAll('#log li[data-gap]')].map(() => 'gap'),
      ]),
      closeCodes: () => page.evaluate(() => [...document.querySelectorAll('#log li[data-code]')].map((li) => Number(li.dataset.code))),
      stop: async () => {},
    };
  }, (m) => t.diagnostic(m));
  if (pageErrors.length) throw new Error(`errors in the page: ${pageErrors.join('; ')}`);
});
