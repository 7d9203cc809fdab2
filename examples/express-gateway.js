// node examples/express-gateway.js   (after `npm run build`)
//
// An Express gateway mounting the racing proxy under /api, as
// docs/getting-started.md shows: Express strips the mount path, so the
// upstream URLs carry it back as a path prefix. It starts two local upstreams,
// answers one request of its own through the gateway, prints what came back,
// and exits. Pass `--serve` to keep it running on http://127.0.0.1:8080.

import http from 'node:http';
import express from 'express';
import { redundantProxy } from '../dist/index.js';

function upstream(name, delayMs) {
  const server = http.createServer((req, res) => {
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ from: name, path: req.url }));
    }, delayMs);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

const a = await upstream('a', 20);
const b = await upstream('b', 2);
const proxy = redundantProxy({
  upstreams: [`http://127.0.0.1:${a.address().port}/api`, `http://127.0.0.1:${b.address().port}/api`],
});
const app = express();
app.use('/api', proxy);
const serve = process.argv.includes('--serve');
const gateway = app.listen(serve ? 8080 : 0, '127.0.0.1');
await new Promise((resolve) => gateway.once('listening', resolve));

if (serve) {
  console.log('Express gateway on http://127.0.0.1:8080/api, racing two upstreams; Ctrl-C to stop');
} else {
  const res = await fetch(`http://127.0.0.1:${gateway.address().port}/api/hello?x=1`);
  console.log(res.status, res.headers.get('x-redundant-served-by'), await res.text());
  gateway.close();
  await proxy.close();
  a.close();
  b.close();
}
