'use strict';
// The addon loader (native.js): which addon it picks, and what it says when
// this platform has none or its package is not installed. Each case runs in
// a child process whose platform is made to look like another's.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const { PLATFORMS, currentName } = require('../platforms.js');

const loader = path.join(__dirname, '..', 'native.js');

/** Require the loader in a child whose process.platform/arch are `platform`/`arch`. */
function loadAs(platform, arch, env = {}) {
  const script = `
    Object.defineProperty(process, 'platform', { value: ${JSON.stringify(platform)} });
    Object.defineProperty(process, 'arch', { value: ${JSON.stringify(arch)} });
    try {
      const native = require(${JSON.stringify(loader)});
      console.log(JSON.stringify({ ok: typeof native.generateFernetKey }));
    } catch (err) {
      console.log(JSON.stringify({ code: err.code, message: err.message }));
    }`;
  const child = spawnSync(process.execPath, ['-e', script], {
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, SNITUN_RS_NATIVE_PATH: '', ...env },
  });
  assert.equal(child.status, 0, child.stderr);
  return JSON.parse(child.stdout.trim().split('\n').pop());
}

test('this platform loads the addon built beside the loader', () => {
  const result = loadAs(process.platform, process.arch);
  assert.deepEqual(result, { ok: 'function' });
});

test('an unsupported platform: an error naming it and every supported one', () => {
  const result = loadAs('linux', 'riscv64');
  assert.equal(result.code, 'ERR_SNITUN_UNSUPPORTED_PLATFORM');
  assert.match(result.message, /no native addon for this platform \(linux-riscv64-(gnu|musl)\)/);
  for (const p of PLATFORMS) assert.ok(result.message.includes(p.name), `${p.name} in: ${result.message}`);

  const freebsd = loadAs('freebsd', 'x64');
  assert.equal(freebsd.code, 'ERR_SNITUN_UNSUPPORTED_PLATFORM');
  assert.match(freebsd.message, /\(freebsd-x64\)/);
});

test('a supported platform whose package is not installed: names the package to install', () => {
  // Another supported platform than this one: no addon beside the loader,
  // no @snitun-rs package for it in node_modules.
  const other = process.platform === 'darwin' ? ['win32', 'x64', 'win32-x64-msvc'] : ['darwin', 'arm64', 'darwin-arm64'];
  const result = loadAs(other[0], other[1]);
  assert.equal(result.code, 'ERR_SNITUN_ADDON_MISSING');
  assert.match(result.message, new RegExp(`install @snitun-rs/${other[2]}`));
  assert.match(result.message, /optional dependency/);
});

test('SNITUN_RS_NATIVE_PATH overrides the choice', () => {
  const built = path.join(__dirname, '..', `snitun-rs.${currentName()}.node`);
  assert.deepEqual(loadAs('freebsd', 'x64', { SNITUN_RS_NATIVE_PATH: built }), { ok: 'function' });
});

test('every platform names a distinct Rust target', () => {
  assert.equal(new Set(PLATFORMS.map((p) => p.triple)).size, PLATFORMS.length);
  assert.equal(new Set(PLATFORMS.map((p) => p.name)).size, PLATFORMS.length);
  assert.ok(PLATFORMS.some((p) => p.name === currentName()), `${currentName()} is a supported platform`);
});
