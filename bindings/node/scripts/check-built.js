'use strict';
// `npm pack` / `npm publish` guard: the tarball is only useful with the
// generated files in it, which `npm run build` makes (they are not in git).
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const missing = ['index.js', 'index.d.ts', 'native.js', 'native.d.ts'].filter(
  (file) => !fs.existsSync(path.join(root, file)),
);
if (!fs.readdirSync(root).some((file) => file.endsWith('.node'))) missing.push('*.node (the native addon)');
if (missing.length > 0) {
  console.error(`snitun-rs: not built, missing ${missing.join(', ')}: run \`npm run build\` first`);
  process.exit(1);
}
