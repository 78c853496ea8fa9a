'use strict';
// Loads the native addon for this platform. The addon is a separate npm
// package per platform (`@snitun-rs/<platform>`, an optional dependency
// of snitun-rs that npm installs only where its os/cpu/libc match); a
// development build (`npm run build`) leaves it beside this file instead.
// SNITUN_RS_NATIVE_PATH names a `.node` file to load instead of both.
const path = require('node:path');
const fs = require('node:fs');
const { PLATFORMS, currentName } = require('./platforms.js');

function load() {
  const override = process.env.SNITUN_RS_NATIVE_PATH;
  if (override) return require(path.resolve(override));

  const name = currentName();
  const supported = PLATFORMS.map((p) => p.name);
  if (!supported.includes(name)) {
    const err = new Error(
      `snitun-rs has no native addon for this platform (${name}); ` +
        `it is built for: ${supported.join(', ')}`,
    );
    err.code = 'ERR_SNITUN_UNSUPPORTED_PLATFORM';
    throw err;
  }

  const local = path.join(__dirname, `snitun-rs.${name}.node`);
  if (fs.existsSync(local)) return require(local);

  const pkg = `@snitun-rs/${name}`;
  try {
    return require(pkg);
  } catch (cause) {
    const missing = cause && cause.code === 'MODULE_NOT_FOUND' && String(cause.message).includes(pkg);
    const err = new Error(
      missing
        ? `snitun-rs: the native addon for this platform (${name}) is not installed: ` +
            `install ${pkg} (an optional dependency of snitun-rs; installs made with ` +
            `--omit=optional or --no-optional leave it out)`
        : `snitun-rs: the native addon ${pkg} for this platform (${name}) failed to load: ${cause.message}`,
      { cause },
    );
    err.code = missing ? 'ERR_SNITUN_ADDON_MISSING' : 'ERR_SNITUN_ADDON_LOAD';
    throw err;
  }
}

module.exports = load();
