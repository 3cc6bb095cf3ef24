// `npm pack` produces an installable package: the library, its types, the example and the
// README, nothing else; installed into an empty project (offline: it has no dependencies), it
// imports by name.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

test('npm pack makes a package that installs and imports', (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'gateway-client-pack-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const [info] = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', dir], { cwd: root, encoding: 'utf8' }));
  const files = info.files.map((f) => f.path).sort();
  for (const f of ['README.md', 'package.json', 'src/index.js', 'src/index.d.ts', 'src/client.js', 'example/index.html', 'example/app.js']) {
    assert.ok(files.includes(f), `${f} is packed: ${files}`);
  }
  assert.ok(!files.some((f) => f.startsWith('test/') || f.startsWith('node_modules/')), `no tests or modules: ${files}`);

  const project = path.join(dir, 'app');
  execFileSync('mkdir', ['-p', project]);
  writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', type: 'module' }));
  execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', path.join(dir, info.filename)], { cwd: project, stdio: 'ignore' });
  const out = execFileSync('node', ['--input-type=module', '-e', `
    import { Client, GatewayError, Backoff, Subscription } from 'gateway-client';
    class FakeSocket { constructor(url) { FakeSocket.url = url; } send() {} close() {} }
    const c = new Client({ url: 'ws://h/ws', token: 't', WebSocket: FakeSocket });
    console.log([typeof Client, typeof GatewayError, typeof Backoff, typeof Subscription, c.state].join(' '));
  `], { cwd: project, encoding: 'utf8' });
  assert.equal(out.trim(), 'function function function function idle');
  assert.ok(readdirSync(path.join(project, 'node_modules/gateway-client/src')).includes('index.d.ts'));
});
