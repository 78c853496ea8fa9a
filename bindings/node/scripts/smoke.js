#!/usr/bin/env node
'use strict';
// Smoke test of a built or installed snitun-rs: one whole tunnel on loopback.
//
//   node scripts/smoke.js [MODULE] [--bytes N] [--timeout MS]
//
// MODULE is what to require: a package name (default "snitun-rs"), looked up
// from the working directory (e.g. a folder where the package is installed),
// or a path to the package folder (e.g. "./" from bindings/node after
// `npm run build`). Needs only Node >= 18 and the package: no test
// framework, no openssl, so it also runs on a bare arm64 node under
// qemu-user.
//
// It starts a Server (SNI and peer ports on 127.0.0.1, port 0), a TCP echo
// endpoint and one Client per cipher, then for each client connects to the
// SNI port as a caller, sends a TLS ClientHello naming the client's hostname
// followed by N random bytes, and checks that every byte comes back through
// the tunnel. Every wait is bounded. Prints one line
// `snitun-rs smoke: ok (<arch>, ...)` and exits 0, or names the step that
// failed and exits 1.

const crypto = require('node:crypto');
const net = require('node:net');
const path = require('node:path');
const { once } = require('node:events');

const CIPHERS = ['aes-cbc', 'aes-gcm', 'aes-gcm-siv'];

function parseArgs(argv) {
  const args = { module: 'snitun-rs', bytes: 1024 * 1024, timeoutMs: 120_000 };
  let positional = 0;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--bytes' || arg === '--timeout') {
      const value = Number(argv[++i]);
      if (!Number.isInteger(value) || value <= 0) throw new Error(`${arg} wants a positive integer`);
      if (arg === '--bytes') args.bytes = value;
      else args.timeoutMs = value;
    } else if (arg.startsWith('--')) {
      throw new Error(`unknown option ${arg}`);
    } else if (positional++ === 0) {
      args.module = arg;
    } else {
      throw new Error(`unexpected argument ${arg}`);
    }
  }
  return args;
}

/**
 * Load `spec` as seen from the working directory: a path (./x, ../x, /x)
 * relative to it, a package name from its node_modules (then from this
 * script's, as plain `require` would).
 */
function load(spec) {
  const isPath = spec.startsWith('.') || path.isAbsolute(spec) || spec.includes(path.sep);
  if (isPath) return require(path.resolve(spec));
  let resolved;
  try {
    resolved = require.resolve(spec, { paths: [process.cwd()] });
  } catch (_) {
    resolved = spec;
  }
  return require(resolved);
}

/** `promise`, or a rejection naming `what` after `ms`. */
function within(promise, what, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function until(predicate, what, ms) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A TLS 1.3 ClientHello record with `host` as its SNI: all the server reads before routing. */
function clientHello(host) {
  const u16 = (n) => Buffer.from([n >> 8, n & 0xff]);
  const u24 = (n) => Buffer.from([n >> 16, (n >> 8) & 0xff, n & 0xff]);
  const name = Buffer.from(host, 'ascii');
  const nameList = Buffer.concat([Buffer.from([0]), u16(name.length), name]); // host_name(0)
  const sni = Buffer.concat([u16(nameList.length), nameList]);
  const extensions = Buffer.concat([
    Buffer.from([0x00, 0x00]), u16(sni.length), sni, // server_name
    Buffer.from([0x00, 0x2b]), u16(3), Buffer.from([0x02, 0x03, 0x04]), // supported_versions: TLS 1.3
    Buffer.from([0x00, 0x0a]), u16(4), u16(2), Buffer.from([0x00, 0x1d]), // supported_groups: x25519
  ]);
  const body = Buffer.concat([
    Buffer.from([0x03, 0x03]), crypto.randomBytes(32), // legacy version, random
    Buffer.from([0x20]), crypto.randomBytes(32), // legacy session id
    u16(4), Buffer.from([0x13, 0x01, 0x13, 0x02]), // cipher suites
    Buffer.from([0x01, 0x00]), // compression: null
    u16(extensions.length), extensions,
  ]);
  const handshake = Buffer.concat([Buffer.from([0x01]), u24(body.length), body]); // client_hello(1)
  return Buffer.concat([Buffer.from([0x16, 0x03, 0x01]), u16(handshake.length), handshake]);
}

/** A TCP server on 127.0.0.1 port 0 that echoes everything back. */
async function echoServer(ms) {
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    socket.pipe(socket);
  });
  server.listen(0, '127.0.0.1');
  await within(once(server, 'listening'), 'echo endpoint listening', ms);
  const close = () => {
    for (const socket of sockets) socket.destroy();
    server.close();
  };
  return { port: server.address().port, close };
}

/** Be a caller: hello + payload in, the same bytes back out. */
async function call(sniAddress, host, payload, ms) {
  const at = sniAddress.lastIndexOf(':');
  const sent = Buffer.concat([clientHello(host), payload]);
  const socket = net.connect(Number(sniAddress.slice(at + 1)), sniAddress.slice(0, at));
  try {
    const back = await within(
      new Promise((resolve, reject) => {
        const chunks = [];
        let size = 0;
        socket.on('error', reject);
        socket.on('connect', () => socket.write(sent));
        socket.on('data', (chunk) => {
          chunks.push(chunk);
          size += chunk.length;
          if (size >= sent.length) resolve(Buffer.concat(chunks));
        });
        socket.on('end', () => reject(new Error(`${host}: the tunnel closed after ${size} of ${sent.length} bytes`)));
      }),
      `${sent.length} bytes back from ${host}`,
      ms,
    );
    if (back.length !== sent.length) throw new Error(`${host}: ${back.length} bytes came back, ${sent.length} sent`);
    if (!back.equals(sent)) {
      let i = 0;
      while (back[i] === sent[i]) i++;
      throw new Error(`${host}: byte ${i} of ${sent.length} came back changed`);
    }
  } finally {
    socket.destroy();
  }
}

async function smoke(args, step) {
  step('require ' + args.module);
  const snitun = load(args.module);
  const ms = args.timeoutMs;

  step('start the echo endpoint');
  const echo = await echoServer(ms);
  let server;
  const clients = [];
  try {
    step('start the server');
    const fernetKey = snitun.generateFernetKey();
    server = new snitun.Server({ fernetKeys: [fernetKey], sni: '127.0.0.1:0', peer: '127.0.0.1:0' });
    const addresses = await within(server.start(), 'server start', ms);
    if (addresses.sni.length !== 1 || addresses.peer.length !== 1) {
      throw new Error(`unexpected server addresses ${JSON.stringify(addresses)}`);
    }

    for (const cipher of CIPHERS) {
      const hostname = `smoke-${cipher}.example.org`;
      step(`connect the ${cipher} client`);
      const minted = snitun.generateToken({ fernetKey, hostname, validSeconds: 600, cipher });
      const client = new snitun.Client({
        server: addresses.peer[0],
        token: minted.token,
        aesKey: minted.aesKey,
        aesIv: minted.aesIv,
        endpoint: `127.0.0.1:${echo.port}`,
        cipher,
      });
      clients.push(client);
      await within(client.connect(), `${cipher} client connect`, ms);
      if (!client.isConnected) throw new Error(`${cipher} client not connected after connect()`);
      await until(() => server.hostnames().includes(hostname), `the server to register ${hostname}`, ms);
    }

    const payload = crypto.randomBytes(args.bytes);
    const started = Date.now();
    for (const cipher of CIPHERS) {
      const hostname = `smoke-${cipher}.example.org`;
      step(`call ${hostname} through the tunnel`);
      await call(addresses.sni[0], hostname, payload, ms);
    }
    const elapsed = (Date.now() - started) / 1000;

    step('disconnect the clients');
    for (const client of clients.splice(0)) await within(client.disconnect(), 'client disconnect', ms);
    await until(() => server.peers().length === 0, 'the server to drop the peers', ms);
    step('stop the server');
    const running = server;
    server = undefined;
    await within(running.stop(), 'server stop', ms);

    return `Node ${process.version}, ${CIPHERS.length} clients (${CIPHERS.join(', ')}), ` +
      `${CIPHERS.length} x ${args.bytes} bytes echoed through the tunnel in ${elapsed.toFixed(2)} s`;
  } finally {
    // After a failure: clean up what is left, without waiting long.
    for (const client of clients) await within(client.disconnect(), 'cleanup', ms).catch(() => {});
    if (server) await within(server.stop(), 'cleanup', ms).catch(() => {});
    echo.close();
  }
}

async function main() {
  let current = 'start';
  const step = (name) => { current = name; };
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`snitun-rs smoke: ${err.message}\nusage: node smoke.js [MODULE] [--bytes N] [--timeout MS]`);
    process.exit(2);
  }
  // A last resort should something hang outside the bounded waits.
  const watchdog = setTimeout(() => {
    console.error(`snitun-rs smoke: FAILED at '${current}': no result after ${args.timeoutMs * 10} ms`);
    process.exit(1);
  }, args.timeoutMs * 10);
  watchdog.unref();
  try {
    const details = await smoke(args, step);
    clearTimeout(watchdog);
    console.log(`snitun-rs smoke: ok (${process.arch}, ${details})`);
  } catch (err) {
    console.error(`snitun-rs smoke: FAILED at '${current}': ${err && err.stack ? err.stack : err}`);
    process.exit(1);
  }
}

main();
