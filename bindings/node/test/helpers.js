'use strict';
// Shared by the tests: bounded waits, a throwaway certificate, a local HTTPS
// endpoint, and a whole tunnel (server + client) on loopback.

const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');
const { once } = require('node:events');

const snitun = require('..');

/** Every wait in the tests is bounded by this unless it says otherwise. */
const LIMIT_MS = 20_000;

/** `promise`, or a rejection naming `what` after `ms`. */
function within(promise, what, ms = LIMIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The next `event` of `emitter`, bounded. */
function next(emitter, event, ms = LIMIT_MS) {
  return within(once(emitter, event), `event ${event}`, ms);
}

let certCache;
/**
 * A self-signed certificate (and its key, PEM) for `device.test` and
 * `alias.test`, made once per process with the openssl CLI: Node's crypto
 * makes keys but not X.509 certificates.
 */
function testCert() {
  if (certCache) return certCache;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snitun-node-cert-'));
  process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  const keyFile = path.join(dir, 'key.pem');
  const certFile = path.join(dir, 'cert.pem');
  execFileSync(
    'openssl',
    [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=device.test',
      '-addext', 'subjectAltName=DNS:device.test,DNS:alias.test',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'], timeout: LIMIT_MS },
  );
  certCache = { dir, keyFile, certFile, key: fs.readFileSync(keyFile), cert: fs.readFileSync(certFile) };
  return certCache;
}

/** A local HTTPS server on 127.0.0.1 port 0 with `handler`; resolves to { server, address }. */
async function httpsEndpoint(handler) {
  const { key, cert } = testCert();
  const server = https.createServer({ key, cert }, handler);
  server.listen(0, '127.0.0.1');
  await next(server, 'listening');
  const { port } = server.address();
  return { server, address: `127.0.0.1:${port}` };
}

/**
 * An HTTPS request to the SNI port `sniAddress` for `hostname`, verifying the
 * endpoint's certificate; resolves to { status, body (Buffer) }. `body` is
 * sent as the request body when given.
 */
function request(sniAddress, hostname, { method = 'GET', path: reqPath = '/', body, ms = LIMIT_MS } = {}) {
  const [host, port] = splitAddress(sniAddress);
  const attempt = new Promise((resolve, reject) => {
    const req = https.request(
      {
        host, port, method, path: reqPath, servername: hostname, ca: testCert().cert,
        headers: { host: hostname }, agent: false,
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
  return within(attempt, `HTTPS ${method} ${hostname}${reqPath}`, ms);
}

/** "host:port" (IPv6 in brackets) as [host, port]. */
function splitAddress(address) {
  const at = address.lastIndexOf(':');
  return [address.slice(0, at).replace(/^\[|\]$/g, ''), Number(address.slice(at + 1))];
}

/** A started server on loopback port 0 (dual-port) and its Fernet key. */
async function startServer(extra = {}) {
  const fernetKey = snitun.generateFernetKey();
  const server = new snitun.Server({ fernetKeys: [fernetKey], sni: '127.0.0.1:0', peer: '127.0.0.1:0', ...extra });
  const addresses = await within(server.start(), 'server start');
  return { server, fernetKey, addresses };
}

/** An address on loopback where nothing listens (bound, then closed). */
async function deadAddress() {
  const net = require('node:net');
  const probe = net.createServer();
  probe.listen(0, '127.0.0.1');
  await next(probe, 'listening');
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return `127.0.0.1:${port}`;
}

/** SHA-256 hex of a Buffer. */
function sha256(data) {
  return crypto.createHash('sha256').update(data).digest('hex');
}

/** Poll `condition` every 10 ms until true, bounded. */
async function until(condition, what, ms = LIMIT_MS) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

module.exports = {
  LIMIT_MS, within, next, testCert, httpsEndpoint, request, splitAddress, startServer,
  deadAddress, sha256, until, snitun,
};
