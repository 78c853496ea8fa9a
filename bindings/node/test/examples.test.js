'use strict';
// examples/node: the server script and the client script run as separate
// processes, a real HTTPS request goes through, and both stop on SIGTERM.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');

const { within, testCert, request } = require('./helpers');

const EXAMPLES = path.resolve(__dirname, '../../../examples/node');

/** A NODE_PATH under which `require('snitun-rs')` finds this package. */
function nodePath() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snitun-node-path-'));
  fs.symlinkSync(path.resolve(__dirname, '..'), path.join(dir, 'snitun-rs'), 'dir');
  process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A running example script whose stdout is read as JSON lines. */
class Script {
  constructor(name, args, env) {
    this.lines = [];
    this.waiters = [];
    this.stderr = '';
    this.child = spawn(process.execPath, [path.join(EXAMPLES, name), ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    let pending = '';
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (chunk) => {
      pending += chunk;
      let end;
      while ((end = pending.indexOf('\n')) >= 0) {
        this.lines.push(JSON.parse(pending.slice(0, end)));
        pending = pending.slice(end + 1);
        this.wake();
      }
    });
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (chunk) => { this.stderr += chunk; });
  }

  wake() {
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  /** The first line (so far or to come) whose `event` is `event`. */
  line(event) {
    return within(
      new Promise((resolve, reject) => {
        const look = () => {
          const found = this.lines.find((l) => l.event === event);
          if (found) resolve(found);
          else this.waiters.push(look);
        };
        this.exited.then(({ code }) => reject(new Error(`exited (${code}) before "${event}": ${this.stderr}`)));
        look();
      }),
      `${event} from the example`,
    );
  }

  /** SIGTERM, then the exit status (bounded). */
  async stop() {
    this.child.kill('SIGTERM');
    return within(this.exited, 'the example to exit after SIGTERM', 15_000);
  }
}

test('examples/node: server.js and client.js serve HTTPS through the tunnel', async (t) => {
  const cert = testCert();
  const env = { NODE_PATH: nodePath() };
  const server = new Script('server.js', ['--sni', '127.0.0.1:0', '--peer', '127.0.0.1:0', '--hostname', 'device.test'], env);
  t.after(() => server.child.kill('SIGKILL'));
  const listening = await server.line('listening');
  assert.equal(listening.sni.length, 1);
  assert.match(listening.fernetKey, /^[A-Za-z0-9_-]{43}=$/);
  const device = listening.device;
  assert.equal(device.hostname, 'device.test');

  const client = new Script('client.js', [
    '--server', listening.peer[0], '--token', device.token, '--aes-key', device.aesKey, '--aes-iv', device.aesIv,
    '--cert', cert.certFile, '--key', cert.keyFile,
  ], env);
  t.after(() => client.child.kill('SIGKILL'));
  await client.line('connected');
  const peer = await server.line('peerConnected');
  assert.equal(peer.hostname, 'device.test');

  const res = await request(listening.sni[0], 'device.test', { path: '/status' });
  assert.equal(res.status, 200);
  assert.equal(res.body.toString(), 'hello from device.test via snitun-rs, GET /status\n');

  assert.deepEqual(await client.stop(), { code: 0, signal: null }, client.stderr);
  assert.equal((await client.line('closed')).reason, 'shut down');
  const gone = await server.line('peerDisconnected');
  assert.equal(gone.hostname, 'device.test');
  assert.deepEqual(await server.stop(), { code: 0, signal: null }, server.stderr);
});

test('examples/node: client.js reports a refused token and exits with 1', async (t) => {
  const cert = testCert();
  const env = { NODE_PATH: nodePath() };
  const server = new Script('server.js', ['--hostname', 'device.test'], env);
  t.after(() => server.child.kill('SIGKILL'));
  const listening = await server.line('listening');
  const client = new Script('client.js', [
    '--server', listening.peer[0], '--token', 'gAAAAABbogus', '--aes-key', '00'.repeat(32), '--aes-iv', '00'.repeat(16),
    '--cert', cert.certFile, '--key', cert.keyFile,
  ], env);
  t.after(() => client.child.kill('SIGKILL'));
  const { code } = await within(client.exited, 'client exit');
  assert.equal(code, 1);
  assert.match(client.stderr, /TOKEN_REFUSED/);
  assert.deepEqual(await server.stop(), { code: 0, signal: null });
});
