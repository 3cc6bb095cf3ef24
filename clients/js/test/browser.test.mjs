// The example page in headless Chromium (Debian's `chromium`, scripts/install-chromium.sh),
// driven by playwright-core: it connects through the library, shows what it receives, and
// survives gateway restarts (1001 and SIGKILL), a network cut and 1013s without losing or
// repeating a message (scenario.mjs), all read back from the page's DOM.

import { test } from 'node:test';
import { newPage, openExample, staticServer } from './browser.mjs';
import { CHANNEL, noLossScenario } from './scenario.mjs';

test('the example page receives every message once across restarts, a cut and 1013s (Chromium)', async (t) => {
  const origin = await staticServer(t);
  const { page, errors } = await newPage(t);
  await noLossScenario(async (url, token) => {
    await openExample(page, origin, { url, token, channel: CHANNEL });
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
  if (errors.length) throw new Error(`errors in the page: ${errors.join('; ')}`);
});
