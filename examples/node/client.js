#!/usr/bin/env node
'use strict';
// A device exposing a local HTTPS server through a SniTun server: callers
// who reach the server's SNI port with the device's hostname land on it, TLS
// end to end (the SniTun server never sees the certificate's key).
//
//   node client.js --server HOST:PORT --token TOKEN --aes-key HEX --aes-iv HEX \
//                  --cert cert.pem --key key.pem [--cipher aes-cbc] [--reconnect]
//
// Prints one JSON object per line and disconnects cleanly on SIGINT/SIGTERM.

const fs = require('node:fs');
const https = require('node:https');
const { once } = require('node:events');
const { parseArgs } = require('node:util');
const snitun = require('snitun-rs');

const { values: args } = parseArgs({
  options: {
    server: { type: 'string' },
    token: { type: 'string' },
    'aes-key': { type: 'string' },
    'aes-iv': { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    cipher: { type: 'string', default: 'aes-cbc' },
    reconnect: { type: 'boolean', default: false },
  },
});

function print(object) {
  console.log(JSON.stringify(object));
}

async function main() {
  for (const name of ['server', 'token', 'aes-key', 'aes-iv', 'cert', 'key']) {
    if (args[name] === undefined) throw new Error(`--${name} is required`);
  }

  // The application: an ordinary HTTPS server, on loopback only.
  const site = https.createServer(
    { cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key) },
    (req, res) => {
      res.setHeader('content-type', 'text/plain');
      res.end(`hello from ${req.headers.host} via snitun-rs, ${req.method} ${req.url}\n`);
    },
  );
  site.listen(0, '127.0.0.1');
  await once(site, 'listening');
  const endpoint = `127.0.0.1:${site.address().port}`;
  let siteOpen = true;
  const closeSite = () => {
    if (siteOpen) site.close();
    siteOpen = false;
  };

  const client = new snitun.Client({
    server: args.server,
    token: args.token,
    aesKey: args['aes-key'],
    aesIv: args['aes-iv'],
    cipher: args.cipher,
    endpoint,
    reconnect: args.reconnect,
  });
  client.on('connected', () => print({ event: 'connected', endpoint }));
  client.on('disconnected', ({ reason, willReconnect }) => print({ event: 'disconnected', reason, willReconnect }));
  client.on('endpointError', ({ caller, error }) => print({ event: 'endpointError', caller, error }));

  const stop = async (signal) => {
    print({ event: 'stopping', signal });
    await client.disconnect();
    closeSite();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);

  try {
    await client.connect();
  } catch (err) {
    closeSite();
    throw err;
  }
  // The session is over: without --reconnect when its link ends, with it
  // only after a signal.
  const reason = await client.waitClosed();
  closeSite();
  print({ event: 'closed', reason });
}

main().catch((err) => {
  console.error(`client: ${err.code ?? ''} ${err.message}`);
  process.exitCode = 1;
});
