'use strict';
// Writes the package.json files of the npm release (scripts/dist):
//
//   node node-package.js platform TRIPLE VERSION DIR ADDON
//       make DIR the package @snitun-rs/<platform>: the addon file ADDON
//       (a napi build's snitun-rs.<platform>.node), with os/cpu/libc set
//       so that npm installs only the one that matches the machine.
//   node node-package.js main VERSION DIR
//       make DIR the package snitun-rs: the built JS of bindings/node
//       (`npm run build` or scripts/dist made it), with an optional
//       dependency on every platform package of the same version.
//
// scripts/dist packs both for a release; bindings/node/scripts/test.sh
// packs a development build the same way and installs it.
const fs = require('node:fs');
const path = require('node:path');

const repo = path.resolve(__dirname, '../..');
const { PLATFORMS } = require(path.join(repo, 'bindings/node/platforms.js'));
const source = JSON.parse(fs.readFileSync(path.join(repo, 'bindings/node/package.json'), 'utf8'));

function write(dir, pkg) {
  fs.writeFileSync(path.join(dir, 'package.json'), `${JSON.stringify(pkg, null, 2)}\n`);
  fs.copyFileSync(path.join(repo, 'LICENSE'), path.join(dir, 'LICENSE'));
}

const common = ['license', 'repository', 'homepage', 'bugs', 'author', 'engines', 'keywords'];
function pick(pkg) {
  return Object.fromEntries(common.filter((k) => pkg[k] !== undefined).map((k) => [k, pkg[k]]));
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'platform') {
  const [triple, version, dir, file] = args;
  const platform = PLATFORMS.find((p) => p.triple === triple);
  if (!platform) throw new Error(`no npm platform for target ${triple}`);
  const addon = `snitun-rs.${platform.name}.node`;
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(file, path.join(dir, addon));
  write(dir, {
    name: `@snitun-rs/${platform.name}`,
    version,
    description: `The native addon of snitun-rs for ${platform.name} (installed by snitun-rs; not used directly)`,
    ...pick(source),
    main: addon,
    files: [addon, 'README.md', 'LICENSE'],
    os: [platform.os],
    cpu: [platform.cpu],
    ...(platform.libc ? { libc: [platform.libc] } : {}),
  });
  fs.writeFileSync(
    path.join(dir, 'README.md'),
    `# @snitun-rs/${platform.name}\n\nThe native addon of [snitun-rs](https://www.npmjs.com/package/snitun-rs) ` +
      `for ${platform.name} (Rust target \`${triple}\`). Install \`snitun-rs\`, which depends on it.\n`,
  );
} else if (mode === 'main') {
  const [version, dir] = args;
  const pkg = { ...source, version };
  delete pkg.devDependencies;
  delete pkg.scripts;
  delete pkg.napi;
  const shipped = pkg.files.filter((f) => !f.includes('*'));
  fs.mkdirSync(dir, { recursive: true });
  for (const file of [...shipped, 'README.md']) {
    const from = path.join(repo, 'bindings/node', file);
    if (!fs.existsSync(from)) throw new Error(`${from} is missing: build bindings/node first`);
    fs.copyFileSync(from, path.join(dir, file));
  }
  pkg.files = [...shipped, 'README.md', 'LICENSE'];
  pkg.optionalDependencies = Object.fromEntries(PLATFORMS.map((p) => [`@snitun-rs/${p.name}`, version]));
  write(dir, pkg);
} else {
  throw new Error('usage: node-package.js platform TRIPLE VERSION DIR ADDON | main VERSION DIR');
}
