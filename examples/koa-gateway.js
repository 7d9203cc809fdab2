// node examples/koa-gateway.js   (after `npm run build`)
//
// A Koa gateway racing two local upstreams, as docs/getting-started.md shows.
// It starts the upstreams itself (on free ports), answers one request of its
// own through the gateway, prints what came back, and exits. Pass `--serve`
// to keep it running on http://127.0.0.1:8080 instead.

import http from 'node:http';
import Koa from 'koa';
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
  upstreams: [
    { id: 'a', url: `http://127.0.0.1:${a.address().port}` },
    { id: 'b', url: `http://127.0.0.1:${b.address().port}` },
  ],
});
const app = new Koa();
app.use(proxy); // the proxy answers; it sets ctx.respond = false and streams the winner
const serve = process.argv.includes('--serve');
const gateway = app.listen(serve ? 8080 : 0, '127.0.0.1');
await new Promise((resolve) => gateway.once('listening', resolve));

if (serve) {
  console.log('Koa gateway on http://127.0.0.1:8080, racing two upstreams; Ctrl-C to stop');
} else {
  const res = await fetch(`http://127.0.0.1:${gateway.address().port}/hello?x=1`);
  console.log(res.status, res.headers.get('x-redundant-served-by'), await res.text());
  gateway.close();
  await proxy.close();
  a.close();
  b.close();
}
