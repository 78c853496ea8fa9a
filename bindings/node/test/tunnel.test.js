'use strict';
// Server and client in one process: a local HTTPS endpoint reached through
// the server's SNI port, bulk data both ways, events and counters.

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');

const {
  within, next, httpsEndpoint, request, startServer, sha256, until, snitun,
} = require('./helpers');

const MIB = 1024 * 1024;
const BULK = 64 * MIB;

test('HTTPS through the tunnel, 64 MiB each way, events and counters', async (t) => {
  // The endpoint: GET /bulk sends BULK bytes, POST /hash answers the SHA-256
  // of what it received, anything else says hello.
  const bulk = crypto.randomBytes(BULK);
  const bulkHash = sha256(bulk);
  const endpoint = await httpsEndpoint((req, res) => {
    if (req.method === 'GET' && req.url === '/bulk') {
      res.writeHead(200, { 'content-length': String(bulk.length) });
      res.end(bulk);
    } else if (req.method === 'POST' && req.url === '/hash') {
      const hash = crypto.createHash('sha256');
      let size = 0;
      req.on('data', (chunk) => { hash.update(chunk); size += chunk.length; });
      req.on('end', () => res.end(JSON.stringify({ size, sha256: hash.digest('hex') })));
    } else {
      res.end(`hello from ${req.headers.host}`);
    }
  });
  t.after(() => endpoint.server.close());

  const { server, fernetKey, addresses } = await startServer();
  t.after(() => server.stop());
  assert.equal(addresses.sni.length, 1);
  assert.equal(addresses.peer.length, 1);
  assert.deepEqual(addresses.listen, []);
  assert.match(addresses.sni[0], /^127\.0\.0\.1:[1-9]\d*$/);
  assert.deepEqual(server.addresses, addresses);

  const minted = snitun.generateToken({
    fernetKey, hostname: 'device.test', aliases: ['alias.test'], validSeconds: 600, cipher: 'aes-gcm',
  });
  const client = new snitun.Client({
    server: addresses.peer[0],
    token: minted.token,
    aesKey: minted.aesKey, // hex string
    aesIv: Buffer.from(minted.aesIv, 'hex'), // Buffer
    endpoint: endpoint.address,
    cipher: 'aes-gcm',
  });
  t.after(() => client.disconnect());
  assert.equal(client.isConnected, false);
  assert.equal(client.stats(), null);

  const clientConnected = next(client, 'connected');
  const peerConnected = next(server, 'peerConnected');
  await within(client.connect(), 'client connect');
  assert.equal(client.isConnected, true);
  await clientConnected;
  const [peer] = await peerConnected;
  assert.equal(peer.hostname, 'device.test');
  assert.deepEqual(peer.aliases, ['alias.test']);
  assert.equal(peer.protocolVersion, 2);
  assert.equal(peer.cipher, 'aes-gcm');
  assert.ok(peer.connectedAt instanceof Date);
  assert.ok(Math.abs(peer.connectedAt.getTime() - Date.now()) < 60_000);
  assert.deepEqual(server.hostnames(), ['alias.test', 'device.test']);

  // A real HTTPS request, certificate verified, by the primary name and the alias.
  const hello = await request(addresses.sni[0], 'device.test');
  assert.equal(hello.status, 200);
  assert.equal(hello.body.toString(), 'hello from device.test');
  const viaAlias = await request(addresses.sni[0], 'alias.test');
  assert.equal(viaAlias.body.toString(), 'hello from alias.test');

  // 64 MiB down, then 64 MiB up, checked by hash.
  const started = Date.now();
  const down = await request(addresses.sni[0], 'device.test', { path: '/bulk', ms: 120_000 });
  assert.equal(down.status, 200);
  assert.equal(down.body.length, BULK);
  assert.equal(sha256(down.body), bulkHash);
  const up = await request(addresses.sni[0], 'device.test', {
    method: 'POST', path: '/hash', body: bulk, ms: 120_000,
  });
  assert.deepEqual(JSON.parse(up.body.toString()), { size: BULK, sha256: bulkHash });
  t.diagnostic(`2 x 64 MiB through TLS + tunnel in ${Date.now() - started} ms`);

  // Both sides counted the traffic (framing included, so at least the payload).
  const [counted] = server.peers();
  assert.equal(counted.hostname, 'device.test');
  assert.ok(counted.bytesOut >= BULK, `server sent ${counted.bytesOut}`);
  assert.ok(counted.bytesIn >= BULK, `server received ${counted.bytesIn}`);
  const stats = client.stats();
  assert.equal(stats.connected, true);
  assert.equal(stats.connects, 1);
  assert.ok(stats.channels >= 4, `channels ${stats.channels}`);
  assert.ok(stats.bytesIn >= BULK && stats.bytesOut >= BULK);

  // Disconnect: the client's final event, the server's peer event, waitClosed.
  const disconnected = next(client, 'disconnected');
  const peerGone = next(server, 'peerDisconnected');
  await within(client.disconnect(), 'disconnect');
  assert.equal(client.isConnected, false);
  const [info] = await disconnected;
  assert.deepEqual(info, { reason: 'shut down', willReconnect: false });
  const [gone] = await peerGone;
  assert.equal(gone.hostname, 'device.test');
  assert.equal(typeof gone.reason, 'string');
  assert.equal(await within(client.waitClosed(), 'waitClosed'), 'shut down');
  await until(() => server.peers().length === 0, 'the server to forget the peer');
  // Disconnecting again is harmless.
  await within(client.disconnect(), 'second disconnect');
});

test('endpointError when the endpoint is down; the tunnel stays up', async (t) => {
  const { deadAddress } = require('./helpers');
  const { server, fernetKey, addresses } = await startServer();
  t.after(() => server.stop());
  const minted = snitun.generateToken({ fernetKey, hostname: 'device.test' });
  const client = new snitun.Client({
    server: addresses.peer[0], token: minted.token, aesKey: minted.aesKey, aesIv: minted.aesIv,
    endpoint: await deadAddress(),
  });
  t.after(() => client.disconnect());
  await within(client.connect(), 'connect');
  await until(() => server.peers().length === 1, 'peer registered');

  const failed = next(client, 'endpointError');
  await assert.rejects(request(addresses.sni[0], 'device.test', { ms: 10_000 }));
  const [info] = await failed;
  assert.equal(info.caller, '127.0.0.1');
  assert.match(info.endpoint, /^127\.0\.0\.1:\d+$/);
  assert.match(info.channel, /^[0-9a-f]{32}$/);
  assert.ok(info.error.length > 0);
  assert.equal(client.isConnected, true);
  assert.equal(client.stats().endpointErrors, 1);
});

test('access list: a blocked caller is refused, an allowed one served', async (t) => {
  const endpoint = await httpsEndpoint((req, res) => res.end('ok'));
  t.after(() => endpoint.server.close());
  for (const [list, served] of [[{ block: ['127.0.0.0/8'] }, false], [{ allow: ['127.0.0.1/32'] }, true]]) {
    const { server, fernetKey, addresses } = await startServer();
    const minted = snitun.generateToken({ fernetKey, hostname: 'device.test' });
    const client = new snitun.Client({
      server: addresses.peer[0], token: minted.token, aesKey: minted.aesKey, aesIv: minted.aesIv,
      endpoint: endpoint.address, ...list,
    });
    try {
      await within(client.connect(), 'connect');
      await until(() => server.peers().length === 1, 'peer registered');
      if (served) {
        assert.equal((await request(addresses.sni[0], 'device.test')).body.toString(), 'ok');
      } else {
        await assert.rejects(request(addresses.sni[0], 'device.test', { ms: 10_000 }));
        await until(() => client.stats().refused === 1, 'the refusal counted');
      }
    } finally {
      await client.disconnect();
      await server.stop();
    }
  }
});

test('single-port mode, every cipher and protocol version', async (t) => {
  const endpoint = await httpsEndpoint((req, res) => res.end(`v${req.headers['x-v']}`));
  t.after(() => endpoint.server.close());
  const fernetKey = snitun.generateFernetKey();
  const server = new snitun.Server({ fernetKeys: [snitun.generateFernetKey(), fernetKey], listen: ['127.0.0.1:0'] });
  const addresses = await within(server.start(), 'start');
  t.after(() => server.stop());
  assert.deepEqual(addresses.sni, []);
  assert.equal(addresses.listen.length, 1);
  for (const cipher of ['aes-cbc', 'aes-gcm', 'aes-gcm-siv']) {
    for (const protocolVersion of [0, 1, 2]) {
      const hostname = `${cipher}-v${protocolVersion}.test`;
      const minted = snitun.generateToken({ fernetKey, hostname, cipher, protocolVersion });
      assert.equal(minted.cipher, cipher);
      assert.equal(minted.protocolVersion, protocolVersion);
      const client = new snitun.Client({
        server: addresses.listen[0], token: minted.token, aesKey: minted.aesKey, aesIv: minted.aesIv,
        endpoint: endpoint.address, cipher, protocolVersion,
      });
      await within(client.connect(), `connect ${hostname}`);
      await until(() => server.hostnames().includes(hostname), `${hostname} registered`);
      const peer = server.peers().find((p) => p.hostname === hostname);
      assert.equal(peer.cipher, cipher);
      assert.equal(peer.protocolVersion, protocolVersion);
      await within(client.disconnect(), 'disconnect');
    }
  }
});

test('reconnect: the client comes back after the server restarts on the same port', async (t) => {
  const { server, fernetKey, addresses } = await startServer();
  const minted = snitun.generateToken({ fernetKey, hostname: 'device.test' });
  const client = new snitun.Client({
    server: addresses.peer[0], token: minted.token, aesKey: minted.aesKey, aesIv: minted.aesIv,
    endpoint: '127.0.0.1:9', reconnect: { initialMs: 50, maxMs: 200, jitter: 0 },
  });
  t.after(() => client.disconnect());
  await within(client.connect(), 'connect');

  const dropped = next(client, 'disconnected');
  await server.stop();
  const [info] = await dropped;
  assert.equal(info.willReconnect, true);

  const again = new snitun.Server({ fernetKeys: [fernetKey], sni: '127.0.0.1:0', peer: addresses.peer[0] });
  const reconnected = next(client, 'connected');
  await within(again.start(), 'restart');
  t.after(() => again.stop());
  await reconnected;
  await until(() => again.peers().length === 1, 'peer back');
  assert.equal(client.isConnected, true);
  assert.ok(client.stats().connects >= 2);

  const final = next(client, 'disconnected');
  await client.disconnect();
  assert.deepEqual((await final)[0], { reason: 'shut down', willReconnect: false });
});

test('proxyProtocol: the caller address of a PROXY header reaches the access list', async (t) => {
  const net = require('node:net');
  const tls = require('node:tls');
  const { splitAddress, testCert } = require('./helpers');
  const endpoint = await httpsEndpoint((req, res) => res.end('behind a proxy'));
  t.after(() => endpoint.server.close());
  const { server, fernetKey, addresses } = await startServer({ proxyProtocol: true });
  t.after(() => server.stop());
  const minted = snitun.generateToken({ fernetKey, hostname: 'device.test' });
  // Only the address the "load balancer" vouches for may call; 127.0.0.1 may not.
  const client = new snitun.Client({
    server: addresses.peer[0], token: minted.token, aesKey: minted.aesKey, aesIv: minted.aesIv,
    endpoint: endpoint.address, allow: ['203.0.113.7/32'],
  });
  t.after(() => client.disconnect());
  await within(client.connect(), 'connect');
  await until(() => server.peers().length === 1, 'peer registered');

  const [host, port] = splitAddress(addresses.sni[0]);
  const call = (source) => within(new Promise((resolve, reject) => {
    const raw = net.connect(port, host, () => {
      raw.write(`PROXY TCP4 ${source} 127.0.0.1 40000 443\r\n`);
      const secure = tls.connect({ socket: raw, servername: 'device.test', ca: testCert().cert }, () => {
        secure.end('GET / HTTP/1.1\r\nhost: device.test\r\nconnection: close\r\n\r\n');
      });
      let answer = '';
      secure.setEncoding('utf8');
      secure.on('data', (chunk) => { answer += chunk; });
      secure.on('end', () => resolve(answer));
      secure.on('error', reject);
    });
    raw.on('error', reject);
  }), `call from ${source}`);

  assert.match(await call('203.0.113.7'), /behind a proxy$/);
  // Refused: the TLS connection ends (or fails) without an answer.
  assert.equal(await call('198.51.100.1').catch(() => ''), '');
  await until(() => client.stats().refused === 1, 'the other caller refused');
  assert.ok(client.stats().channels >= 1);
});
