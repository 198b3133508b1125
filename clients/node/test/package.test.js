// What `npm pack` puts in the package: the code, the declarations, and the copy of bus's .proto
// files that $sys answers are decoded with (README.md, "bus's own .proto files"), not the tests.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { run } = require('../../../tests/support/processes');

test('npm pack carries lib/, index.d.ts and proto/bus/v1, not the tests', async () => {
  const out = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts=false'],
    { env: { ...process.env, npm_config_loglevel: 'silent' }, timeout: 60000, cwd: path.join(__dirname, '..') });
  const files = JSON.parse(out)[0].files.map((f) => f.path);
  for (const f of ['index.js', 'index.d.ts', 'lib/client.js', 'lib/wire.js', 'lib/types.js',
    'proto/bus/v1/broker.proto', 'proto/bus/v1/envelope.proto', 'README.md']) {
    assert.ok(files.includes(f), `${f} is not packed: ${files.join(', ')}`);
  }
  assert.ok(!files.some((f) => f.startsWith('test/') || f.startsWith('node_modules/')), files.join(', '));
});
