'use strict';
// Keys, tokens and option checking (no network).

const test = require('node:test');
const assert = require('node:assert/strict');

const { snitun } = require('./helpers');
const { ConfigError, SnitunError } = snitun;

const fernetKey = snitun.generateFernetKey();
const minted = snitun.generateToken({ fernetKey, hostname: 'device.test' });
const good = {
  server: '127.0.0.1:8080', token: minted.token, aesKey: minted.aesKey, aesIv: minted.aesIv, endpoint: '127.0.0.1:8443',
};

/** `fn` throws a ConfigError with `code`, its message matching `pattern`. */
function throwsConfig(fn, pattern, code = 'CONFIG') {
  assert.throws(fn, (err) => {
    assert.ok(err instanceof ConfigError, `${err && err.name}: ${err && err.message}`);
    assert.ok(err instanceof SnitunError);
    assert.equal(err.code, code);
    assert.match(err.message, pattern);
    assert.doesNotMatch(err.message, /\[snitun:/);
    return true;
  });
}

test('generateFernetKey: 32 random bytes as URL-safe base64', () => {
  const a = snitun.generateFernetKey();
  const b = snitun.generateFernetKey();
  assert.match(a, /^[A-Za-z0-9_-]{43}=$/);
  assert.equal(Buffer.from(a, 'base64url').length, 32);
  assert.notEqual(a, b);
});

test('generateToken: fields, defaults and options', () => {
  const before = Date.now() / 1000;
  const t = snitun.generateToken({ fernetKey, hostname: 'device.test' });
  assert.match(t.token, /^gAAAAA[A-Za-z0-9_-]+=*$/);
  assert.match(t.aesKey, /^[0-9a-f]{64}$/);
  assert.match(t.aesIv, /^[0-9a-f]{32}$/);
  assert.equal(t.hostname, 'device.test');
  assert.deepEqual(t.aliases, []);
  assert.equal(t.cipher, 'aes-cbc');
  assert.equal(t.protocolVersion, 2);
  assert.ok(t.valid >= before + 3599 && t.valid <= Date.now() / 1000 + 3601, `valid ${t.valid}`);

  const u = snitun.generateToken({
    fernetKey, hostname: 'a.test', aliases: ['b.test', 'c.test'], validSeconds: 10, cipher: 'aes-gcm-siv', protocolVersion: 1,
  });
  assert.deepEqual(u.aliases, ['b.test', 'c.test']);
  assert.equal(u.cipher, 'aes-gcm-siv');
  assert.equal(u.protocolVersion, 1);
  assert.notEqual(u.aesKey, t.aesKey);
  assert.notEqual(u.token, t.token);
});

test('generateToken: bad input', () => {
  throwsConfig(() => snitun.generateToken({ fernetKey: 'not a key', hostname: 'x' }), /Fernet key/, 'INVALID_KEY');
  throwsConfig(() => snitun.generateToken({ fernetKey: Buffer.alloc(16).toString('base64url'), hostname: 'x' }), /32 bytes/, 'INVALID_KEY');
  throwsConfig(() => snitun.generateToken({ fernetKey, hostname: '' }), /hostname/);
  throwsConfig(() => snitun.generateToken({ fernetKey, hostname: 7 }), /hostname/);
  throwsConfig(() => snitun.generateToken({ fernetKey, hostname: 'x', cipher: 'rot13' }), /rot13/, 'UNSUPPORTED_CIPHER');
  throwsConfig(() => snitun.generateToken({ fernetKey, hostname: 'x', protocolVersion: 3 }), /protocolVersion/);
  throwsConfig(() => snitun.generateToken({ fernetKey, hostname: 'x', protocolVersion: 1.5 }), /protocolVersion/);
  throwsConfig(() => snitun.generateToken({ fernetKey, hostname: 'x', validSeconds: NaN }), /validSeconds/);
  throwsConfig(() => snitun.generateToken({ fernetKey, hostname: 'x', aliases: [1] }), /aliases/);
  throwsConfig(() => snitun.generateToken(), /options object/);
  throwsConfig(() => snitun.generateToken(null), /options object/);
});

test('Client: options are checked at construction', () => {
  assert.ok(new snitun.Client(good));
  assert.ok(new snitun.Client({ ...good, aesKey: Buffer.from(minted.aesKey, 'hex'), aesIv: new Uint8Array(16) }));
  throwsConfig(() => new snitun.Client(), /options object/);
  throwsConfig(() => new snitun.Client({ ...good, server: undefined }), /server/);
  throwsConfig(() => new snitun.Client({ ...good, server: '127.0.0.1' }), /host:port/);
  throwsConfig(() => new snitun.Client({ ...good, server: ':8080' }), /host:port/);
  throwsConfig(() => new snitun.Client({ ...good, server: 'host:99999' }), /host:port/);
  throwsConfig(() => new snitun.Client({ ...good, endpoint: 'nowhere' }), /endpoint/);
  throwsConfig(() => new snitun.Client({ ...good, token: '' }), /token/);
  throwsConfig(() => new snitun.Client({ ...good, aesKey: 'abc' }), /hex/);
  throwsConfig(() => new snitun.Client({ ...good, aesKey: 'zz'.repeat(32) }), /hex/);
  throwsConfig(() => new snitun.Client({ ...good, aesKey: Buffer.alloc(16) }), /aesKey must be 32 bytes/, 'INVALID_KEY');
  throwsConfig(() => new snitun.Client({ ...good, aesIv: Buffer.alloc(32) }), /aesIv must be 16 bytes/, 'INVALID_KEY');
  throwsConfig(() => new snitun.Client({ ...good, aesIv: 42 }), /aesIv/);
  throwsConfig(() => new snitun.Client({ ...good, cipher: 'des' }), /des/, 'UNSUPPORTED_CIPHER');
  throwsConfig(() => new snitun.Client({ ...good, protocolVersion: 7 }), /protocolVersion/);
  throwsConfig(() => new snitun.Client({ ...good, allow: ['10.0.0.0/8'], block: ['10.1.0.0/16'] }), /not both/);
  throwsConfig(() => new snitun.Client({ ...good, allow: ['10.0.0.0/33'] }), /10\.0\.0\.0\/33/);
  throwsConfig(() => new snitun.Client({ ...good, block: ['not a network'] }), /not a network/);
  throwsConfig(() => new snitun.Client({ ...good, throttling: 0 }), /throttling/);
  throwsConfig(() => new snitun.Client({ ...good, reconnect: { multiplier: 0.5 } }), /multiplier/);
  throwsConfig(() => new snitun.Client({ ...good, reconnect: { jitter: 2 } }), /jitter/);
  throwsConfig(() => new snitun.Client({ ...good, reconnect: { initialMs: -1 } }), /initialMs/);
  throwsConfig(() => new snitun.Client({ ...good, connectTimeout: 0 }), /connectTimeout/);
  throwsConfig(() => new snitun.Client({ ...good, connectTimeout: Infinity }), /connectTimeout/);
});

test('Server: options are checked at construction', () => {
  const keys = [fernetKey];
  assert.ok(new snitun.Server({ fernetKeys: keys, listen: '127.0.0.1:0' }));
  assert.ok(new snitun.Server({ fernetKeys: keys, sni: ['127.0.0.1:0', '[::1]:0'], peer: 'localhost:0' }));
  throwsConfig(() => new snitun.Server(), /options object/);
  throwsConfig(() => new snitun.Server({ fernetKeys: [], listen: '127.0.0.1:0' }), /fernetKeys/);
  throwsConfig(() => new snitun.Server({ fernetKeys: fernetKey, listen: '127.0.0.1:0' }), /fernetKeys/);
  throwsConfig(() => new snitun.Server({ fernetKeys: ['short'], listen: '127.0.0.1:0' }), /Fernet key/, 'INVALID_KEY');
  throwsConfig(() => new snitun.Server({ fernetKeys: keys }), /no listen address/);
  throwsConfig(() => new snitun.Server({ fernetKeys: keys, sni: '127.0.0.1:0' }), /both an sni and a peer/);
  throwsConfig(() => new snitun.Server({ fernetKeys: keys, listen: '127.0.0.1' }), /host:port/);
  throwsConfig(() => new snitun.Server({ fernetKeys: keys, listen: [1] }), /listen/);
  throwsConfig(() => new snitun.Server({ fernetKeys: keys, listen: '127.0.0.1:0', throttling: 0 }), /throttling/);
  throwsConfig(() => new snitun.Server({ fernetKeys: keys, listen: '127.0.0.1:0', proxyProtocol: 'yes' }), /proxyProtocol/);
});

test('before start and connect: harmless defaults', async () => {
  const server = new snitun.Server({ fernetKeys: [fernetKey], listen: '127.0.0.1:0' });
  assert.equal(server.addresses, null);
  assert.deepEqual(server.peers(), []);
  assert.deepEqual(server.hostnames(), []);
  await server.stop();
  const client = new snitun.Client(good);
  assert.equal(client.isConnected, false);
  assert.equal(client.stats(), null);
  await client.disconnect();
  assert.equal(await client.waitClosed(), null);
});
