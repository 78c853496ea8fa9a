'use strict';
// The platforms snitun-rs ships a native addon for, in one place: the
// loader (native.js) picks one of them at run time, and the release build
// (scripts/dist) makes one npm package per entry, `@snitun-rs/<name>`, with
// npm's os/cpu/libc fields set so that npm installs only the matching one.

/** @type {{name: string, triple: string, os: string, cpu: string, libc?: string}[]} */
const PLATFORMS = [
  { name: 'linux-x64-gnu', triple: 'x86_64-unknown-linux-gnu', os: 'linux', cpu: 'x64', libc: 'glibc' },
  { name: 'linux-arm64-gnu', triple: 'aarch64-unknown-linux-gnu', os: 'linux', cpu: 'arm64', libc: 'glibc' },
  { name: 'linux-x64-musl', triple: 'x86_64-unknown-linux-musl', os: 'linux', cpu: 'x64', libc: 'musl' },
  { name: 'linux-arm64-musl', triple: 'aarch64-unknown-linux-musl', os: 'linux', cpu: 'arm64', libc: 'musl' },
  { name: 'darwin-x64', triple: 'x86_64-apple-darwin', os: 'darwin', cpu: 'x64' },
  { name: 'darwin-arm64', triple: 'aarch64-apple-darwin', os: 'darwin', cpu: 'arm64' },
  { name: 'win32-x64-msvc', triple: 'x86_64-pc-windows-msvc', os: 'win32', cpu: 'x64' },
];

/** The C library of this Linux process: 'glibc' or 'musl'. */
function linuxLibc() {
  // Node's own report names the glibc it runs on; a musl build has none.
  try {
    const report = process.report && process.report.getReport();
    const header = report && (typeof report === 'string' ? JSON.parse(report) : report).header;
    if (header) return header.glibcVersionRuntime ? 'glibc' : 'musl';
  } catch (_) {
    // Fall through to the file system.
  }
  try {
    return require('node:fs').readFileSync('/usr/bin/ldd', 'utf8').includes('musl') ? 'musl' : 'glibc';
  } catch (_) {
    return 'glibc';
  }
}

/** The platform name of this process (also when no addon exists for it). */
function currentName() {
  if (process.platform === 'linux') {
    return `linux-${process.arch}-${linuxLibc() === 'musl' ? 'musl' : 'gnu'}`;
  }
  if (process.platform === 'win32') return `win32-${process.arch}-msvc`;
  return `${process.platform}-${process.arch}`;
}

module.exports = { PLATFORMS, currentName };
