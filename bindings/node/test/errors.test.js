'use strict';
// Failures: each rejects with the Error subclass and code of its kind.

const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');

const { within, next, startServer, deadAddress, until, snitun } = require('./helpers');
const { SnitunError, ConfigError, ConnectionError, TokenError, StateError } = snitun;

/** Client options for `minted` against `server`. */
function clientFor(server, minted, extra = {}) {
  return new snitun.Client({
    server, token: minted.token, aesKey: minted.aesKey, aesIv: minted.aesIv, endpoint: '127.0.0.1:9', ...extra,
  });
}

test('a refused server: ConnectionError IO / ECONNREFUSED', async () => {
  const minted = snitun.generateToken({ fernetKey: snitun.generateFernetKey(), hostname: 'device.test' });
  const client = clientFor(await deadAddress(), minted);
  const err = await within(client.connect().then(() => null, (e) => e), 'connect');
  assert.ok(err instanceof ConnectionError, String(err));
  assert.ok(err instanceof SnitunError);
  assert.ok(err instanceof Error);
  assert.equal(err.name, 'ConnectionError');
  assert.equal(err.code, 'IO');
  assert.equal(err.ioCode, 'ECONNREFUSED');
  assert.match(err.message, /cannot connect to the server/);
  assert.doesNotMatch(err.message, /\[snitun:/);
  assert.equal(client.isConnected, false);
  assert.equal(await client.waitClosed(), null);
});

test('a pending connect() leaves the event loop free; a hang-up before the challenge is TOKEN_REFUSED', async (t) => {
  // A "server" that accepts and says nothing until we tell it to hang up.
  const sockets = [];
  const silent = net.createServer((socket) => sockets.push(socket));
  silent.listen(0, '127.0.0.1');
  await next(silent, 'listening');
  t.after(() => silent.close());
  const minted = snitun.generateToken({ fernetKey: snitun.generateFernetKey(), hostname: 'device.test' });
  const client = clientFor(`127.0.0.1:${silent.address().port}`, minted);
  const connecting = client.connect().then(() => null, (e) => e);

  // While the handshake waits, timers keep firing on time.
  const lags = [];
  for (let i = 0; i < 10; i++) {
    const before = Date.now();
    await new Promise((r) => setTimeout(r, 20));
    lags.push(Date.now() - before - 20);
  }
  assert.ok(Math.max(...lags) < 500, `timer lag ${lags}`);
  await until(() => sockets.length === 1, 'the client to connect');
  assert.equal(client.isConnected, false);
  await assert.rejects(client.connect(), (err) => err instanceof StateError && /in progress/.test(err.message));

  sockets[0].destroy();
  const err = await within(connecting, 'connect to fail');
  assert.ok(err instanceof TokenError, String(err));
  assert.equal(err.code, 'TOKEN_REFUSED');
});

test('a token minted with another Fernet key: TokenError TOKEN_REFUSED', async (t) => {
  const { server, addresses } = await startServer();
  t.after(() => server.stop());
  const minted = snitun.generateToken({ fernetKey: snitun.generateFernetKey(), hostname: 'device.test' });
  await assert.rejects(within(clientFor(addresses.peer[0], minted).connect(), 'connect'), (err) => {
    assert.ok(err instanceof TokenError, String(err));
    assert.equal(err.code, 'TOKEN_REFUSED');
    assert.match(err.message, /refused the token/);
    return true;
  });
  assert.deepEqual(server.peers(), []);
});

test('an expired token: TokenError TOKEN_REFUSED', async (t) => {
  const { server, fernetKey, addresses } = await startServer();
  t.after(() => server.stop());
  const minted = snitun.generateToken({ fernetKey, hostname: 'device.test', validSeconds: -60 });
  assert.ok(minted.valid < Date.now() / 1000);
  await assert.rejects(within(clientFor(addresses.peer[0], minted).connect(), 'connect'), (err) => {
    assert.ok(err instanceof TokenError, String(err));
    assert.equal(err.code, 'TOKEN_REFUSED');
    return true;
  });
  assert.deepEqual(server.peers(), []);
});

test('a wrong AES key with aes-gcm fails the handshake: ConnectionError', async (t) => {
  const { server, fernetKey, addresses } = await startServer();
  t.after(() => server.stop());
  const minted = snitun.generateToken({ fernetKey, hostname: 'device.test', cipher: 'aes-gcm' });
  const client = clientFor(addresses.peer[0], minted, { cipher: 'aes-gcm', aesKey: Buffer.alloc(32, 7) });
  await assert.rejects(within(client.connect(), 'connect'), (err) => {
    assert.ok(err instanceof ConnectionError, String(err));
    assert.equal(err.code, 'DECRYPT_FAILED');
    return true;
  });
  assert.equal(client.isConnected, false);
});

test('a wrong AES key with aes-cbc: connected, then dropped by the server', async (t) => {
  // CBC has no authentication: the client cannot see the mistake during the
  // handshake, the server closes the link right after it.
  const { server, fernetKey, addresses } = await startServer();
  t.after(() => server.stop());
  const minted = snitun.generateToken({ fernetKey, hostname: 'device.test' });
  const client = clientFor(addresses.peer[0], minted, { aesIv: Buffer.alloc(16, 1) });
  const dropped = next(client, 'disconnected');
  await within(client.connect(), 'connect');
  const [info] = await dropped;
  assert.equal(info.willReconnect, false);
  assert.match(info.reason, /rejected the token or the AES key/);
  assert.match(await within(client.waitClosed(), 'waitClosed'), /rejected/);
  assert.equal(client.isConnected, false);
  assert.deepEqual(server.peers(), []);
});

test('connect() twice: StateError; connect() again after the session ended works', async (t) => {
  const { server, fernetKey, addresses } = await startServer();
  t.after(() => server.stop());
  const minted = snitun.generateToken({ fernetKey, hostname: 'device.test' });
  const client = clientFor(addresses.peer[0], minted);
  t.after(() => client.disconnect());
  await within(client.connect(), 'connect');
  await assert.rejects(client.connect(), (err) => err instanceof StateError && err.code === 'INVALID_STATE');
  await client.disconnect();
  await within(client.connect(), 'connect again');
  assert.equal(client.isConnected, true);
  await until(() => server.peers().length === 1, 'peer');
});

test('server start: an address in use is ConnectionError IO / EADDRINUSE; start twice is StateError', async (t) => {
  const { server, addresses } = await startServer();
  t.after(() => server.stop());
  await assert.rejects(server.start(), (err) => err instanceof StateError && err.code === 'INVALID_STATE');
  const clash = new snitun.Server({ fernetKeys: [snitun.generateFernetKey()], sni: addresses.sni[0], peer: '127.0.0.1:0' });
  await assert.rejects(clash.start(), (err) => {
    assert.ok(err instanceof ConnectionError, String(err));
    assert.equal(err.code, 'IO');
    assert.equal(err.ioCode, 'EADDRINUSE');
    assert.match(err.message, new RegExp(addresses.sni[0].replace(/\./g, '\\.')));
    return true;
  });
  // A failed start leaves the server stoppable and startable.
  await clash.stop();
  assert.equal(clash.addresses, null);
  // Stopping twice, or a server never started, is harmless.
  await server.stop();
  await server.stop();
  assert.equal(server.addresses, null);
  assert.deepEqual(server.peers(), []);
});

test('a host name that does not resolve: IO / ENOTFOUND', async () => {
  const server = new snitun.Server({ fernetKeys: [snitun.generateFernetKey()], listen: 'no-such-host.invalid:0' });
  await assert.rejects(within(server.start(), 'start'), (err) => {
    assert.ok(err instanceof ConnectionError, String(err));
    assert.equal(err.ioCode, 'ENOTFOUND');
    return true;
  });
});
