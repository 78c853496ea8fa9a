'use strict';
// A process with a client (or a server) stays alive while it is connected
// (started), and exits by itself once disconnect() (stop()) resolved: no
// handle is left keeping the event loop alive.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawn } = require('node:child_process');

const { within, startServer, snitun } = require('./helpers');

const PACKAGE = path.resolve(__dirname, '..');

// Runs in the child: connects, says "ready", and on SIGUSR2 disconnects and
// (for "both") stops its own server, then simply returns. A signal listener
// does not keep the loop alive, so only snitun's handles could.
const CHILD = `
const snitun = require(${JSON.stringify(PACKAGE)});
(async () => {
  const mode = process.argv[1];
  let server, peer, fernetKey;
  if (mode === 'both') {
    fernetKey = snitun.generateFernetKey();
    server = new snitun.Server({ fernetKeys: [fernetKey], sni: '127.0.0.1:0', peer: '127.0.0.1:0' });
    peer = (await server.start()).peer[0];
  } else {
    ({ peer, fernetKey } = JSON.parse(process.argv[2]));
  }
  const t = snitun.generateToken({ fernetKey, hostname: 'child.test' });
  const client = new snitun.Client({ server: peer, token: t.token, aesKey: t.aesKey, aesIv: t.aesIv, endpoint: '127.0.0.1:9' });
  client.on('disconnected', ({ reason }) => console.log('disconnected: ' + reason));
  await client.connect();
  process.once('SIGUSR2', async () => {
    await client.disconnect();
    if (server) await server.stop();
    console.log('done');
  });
  console.log('ready');
})().catch((err) => { console.error(err); process.exit(3); });
`;

/** Spawn the child; resolves to { child, output(), exited } once it said "ready". */
async function startChild(args) {
  const child = spawn(process.execPath, ['-e', CHILD, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let output = '';
  child.stdout.setEncoding('utf8');
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  await within(
    new Promise((resolve, reject) => {
      child.stdout.on('data', (chunk) => {
        output += chunk;
        if (output.includes('ready\n')) resolve();
      });
      exited.then(({ code }) => reject(new Error(`child exited early with ${code}: ${output}`)));
    }),
    'child ready',
  );
  return { child, output: () => output, exited };
}

async function checkExit(args) {
  const { child, output, exited } = await startChild(args);
  try {
    // Connected, it must still be running a while later.
    const early = await Promise.race([exited, new Promise((r) => setTimeout(() => r(null), 500))]);
    assert.equal(early, null, `the child exited while connected: ${output()}`);
    child.kill('SIGUSR2');
    const { code, signal } = await within(exited, 'the child to exit after disconnect()', 10_000);
    assert.equal(signal, null);
    assert.equal(code, 0, output());
    assert.match(output(), /disconnected: shut down\ndone\n/);
  } finally {
    child.kill('SIGKILL');
  }
}

test('a process with a client exits after disconnect()', async (t) => {
  const { server, fernetKey, addresses } = await startServer();
  t.after(() => server.stop());
  await checkExit(['client', JSON.stringify({ peer: addresses.peer[0], fernetKey })]);
});

test('a process with a server and a client exits after disconnect() and stop()', async () => {
  await checkExit(['both']);
});
