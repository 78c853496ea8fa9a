#!/usr/bin/env node
'use strict';
// A SniTun server: callers connect to the SNI port with TLS, devices to the
// peer port. Prints one JSON object per line (what it listens on, then peer
// events) and stops cleanly on SIGINT/SIGTERM.
//
//   node server.js [--fernet-key KEY] [--sni 0.0.0.0:443] [--peer 0.0.0.0:8080]
//                  [--hostname device.example.org]
//
// Without --fernet-key a fresh key is made and printed. With --hostname it
// also mints a token for that device (valid one hour) and prints it, ready
// for client.js.

const { parseArgs } = require('node:util');
const snitun = require('snitun-rs');

const { values: args } = parseArgs({
  options: {
    'fernet-key': { type: 'string' },
    sni: { type: 'string', default: '127.0.0.1:0' },
    peer: { type: 'string', default: '127.0.0.1:0' },
    hostname: { type: 'string' },
  },
});

function print(object) {
  console.log(JSON.stringify(object));
}

async function main() {
  const fernetKey = args['fernet-key'] ?? snitun.generateFernetKey();
  const server = new snitun.Server({ fernetKeys: [fernetKey], sni: args.sni, peer: args.peer });
  server.on('peerConnected', (peer) =>
    print({ event: 'peerConnected', hostname: peer.hostname, from: peer.remoteAddress, cipher: peer.cipher }),
  );
  server.on('peerDisconnected', ({ hostname, reason }) => print({ event: 'peerDisconnected', hostname, reason }));

  const addresses = await server.start();
  const listening = { event: 'listening', ...addresses };
  if (args['fernet-key'] === undefined) listening.fernetKey = fernetKey;
  if (args.hostname !== undefined) {
    listening.device = snitun.generateToken({ fernetKey, hostname: args.hostname, validSeconds: 3600 });
  }
  print(listening);

  const stop = async (signal) => {
    print({ event: 'stopping', signal });
    await server.stop();
    // Nothing is left open: the process ends by itself.
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((err) => {
  console.error(`server: ${err.code ?? ''} ${err.message}`);
  process.exitCode = 1;
});
