// Type-checked with `tsc --noEmit` (never run): the published declarations
// describe the API as the README shows it, and reject misuse. Each
// `@ts-expect-error` fails the check if the line it marks compiles.
import {
  Client,
  ConfigError,
  ConnectionError,
  generateFernetKey,
  generateToken,
  Server,
  SnitunError,
  TokenError,
  type ClientStats,
  type ErrorCode,
  type GeneratedToken,
  type PeerInfo,
  type ServerAddresses,
} from 'snitun-rs';

async function main(): Promise<void> {
  const fernetKey: string = generateFernetKey();
  const server = new Server({ fernetKeys: [fernetKey], sni: '127.0.0.1:0', peer: ['127.0.0.1:0'], proxyProtocol: false });
  server.on('peerConnected', (peer: PeerInfo) => {
    const when: Date = peer.connectedAt;
    const total: number = peer.bytesIn + peer.bytesOut;
    console.log(peer.hostname, peer.aliases.join(','), peer.cipher, when, total);
  });
  server.on('peerDisconnected', ({ hostname, reason }) => console.log(hostname, reason.length));
  // @ts-expect-error: not an event of Server
  server.on('connected', () => {});
  const addresses: ServerAddresses = await server.start();

  const minted: GeneratedToken = generateToken({ fernetKey, hostname: 'device.test', aliases: ['b.test'], validSeconds: 60, cipher: 'aes-gcm' });
  // @ts-expect-error: unknown cipher name
  generateToken({ fernetKey, hostname: 'x', cipher: 'des' });
  // @ts-expect-error: hostname is required
  generateToken({ fernetKey });

  const client = new Client({
    server: addresses.peer[0] ?? '',
    token: minted.token,
    aesKey: minted.aesKey,
    aesIv: Buffer.from(minted.aesIv, 'hex'),
    endpoint: '127.0.0.1:8443',
    cipher: minted.cipher,
    protocolVersion: 2,
    allow: ['192.0.2.0/24'],
    throttling: null,
    reconnect: { initialMs: 100 },
  });
  client.on('connected', () => console.log('up'));
  client.on('disconnected', (info) => {
    const again: boolean = info.willReconnect;
    console.log(info.reason, again);
  });
  client.once('endpointError', (e) => console.log(e.caller, e.endpoint, e.error, e.channel));
  // @ts-expect-error: the disconnected listener gets an info object, not a number
  client.on('disconnected', (n: number) => n);
  // @ts-expect-error: aesKey must be bytes or hex
  new Client({ server: 'a:1', token: 't', aesKey: 5, aesIv: '', endpoint: 'b:2' });

  try {
    await client.connect();
  } catch (err) {
    if (err instanceof TokenError || err instanceof ConnectionError || err instanceof ConfigError) {
      const code: ErrorCode = err.code;
      const ioCode: string | undefined = err.ioCode;
      console.log(code, ioCode, err.message);
    }
    if (err instanceof SnitunError && err.code === 'TOKEN_REFUSED') return;
  }
  const connected: boolean = client.isConnected;
  const stats: ClientStats | null = client.stats();
  console.log(connected, stats?.bytesIn, server.peers().length, server.hostnames(), server.addresses?.sni);
  await client.disconnect();
  const reason: string | null = await client.waitClosed();
  console.log(reason);
  await server.stop();
}

void main;
