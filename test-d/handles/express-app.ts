// Must compile: an Express replica uses the worker's handle through `req`
// with no cast and no `declare global` of its own.
import express from 'express';
import { redundantWorker, MemorySessionStore, type RedundantHandle } from 'redundant-proxy';

const worker = redundantWorker({ id: 'a', store: new MemorySessionStore() });
const app = express();
app.use(worker);
app.post('/transfer', async (req, res) => {
  const h: RedundantHandle = req.redundant;
  const fence: number = await req.redundant.commitOnce(async (fence) => fence + 1);
  const claim = await h.claim();
  await claim.confirm();
  const visits = Number(req.redundant.session.data.visits ?? 0) + 1;
  req.redundant.session.data.visits = visits;
  if (req.redundant.signal.aborted) return;
  res.json({ fence, visits, requestId: req.redundant.requestId, copy: req.redundant.copy.index, of: req.redundant.copy.of, key: req.redundant.idempotencyKey });
});
app.use(worker.errorHandler);
