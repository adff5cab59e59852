'use strict';
// lib/index.d.ts is hand-written: compile an ordinary Express program
// against it (test/types-check.ts) so the types stay true to the API.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const ROOT = path.join(__dirname, '..');
const TSC = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');

test('the TypeScript declarations compile with an Express program', { skip: !fs.existsSync(TSC) && 'typescript not installed' }, () => {
  const r = spawnSync(process.execPath, [TSC, '-p', path.join(ROOT, 'tsconfig.json')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});
