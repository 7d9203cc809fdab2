import { Agent, request } from 'undici';

/** An HTTP client whose connections a test closes in afterAll. */
export function testClient() {
  const agent = new Agent({ keepAliveTimeout: 500 });
  async function send(url: string, init: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {}) {
    const res = await request(url, { method: (init.method ?? 'GET') as 'GET', headers: init.headers, body: init.body, dispatcher: agent });
    const body = Buffer.from(await res.body.arrayBuffer());
    return {
      status: res.statusCode,
      headers: res.headers as Record<string, string | string[] | undefined>,
      body,
      text: body.toString(),
      json: () => JSON.parse(body.toString()) as Record<string, unknown>,
    };
  }
  let closing: Promise<void> | undefined;
  return { agent, send, close: () => (closing ??= agent.close()) };
}
