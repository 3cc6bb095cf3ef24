// Headless Chromium for the tests: Debian's `chromium` (scripts/install-chromium.sh; or
// $CHROMIUM) driven by playwright-core with a fresh profile, and a static server for the page.

import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript' };

/** Serves clients/js read-only (the page and the library it imports); closed after the test. */
export async function staticServer(t) {
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
  t.after(() => new Promise((r) => server.close(r)));
  return `http://127.0.0.1:${server.address().port}`;
}

/** A page in a fresh headless Chromium, closed (profile removed) after the test. */
export async function newPage(t) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: run scripts/install-chromium.sh (or set CHROMIUM)`);
  }
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
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  return { page, errors };
}

/** Opens the example page joined to `channel` and waits until it says so. */
export async function openExample(page, origin, params) {
  await page.goto(`${origin}/example/index.html?${new URLSearchParams(params)}`);
  await page.waitForSelector('#status[data-state=connected]', { timeout: 30_000 });
  await waitForLog(page, `joined ${params.channel}`);
}

/** Waits until a line of the page's event log contains `text`. */
export function waitForLog(page, text) {
  return page.waitForFunction((t) => [...document.querySelectorAll('#log li')].some((li) => li.textContent.includes(t)), text, { timeout: 30_000 });
}
