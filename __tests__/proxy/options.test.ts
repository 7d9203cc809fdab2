import { describe, expect, it } from '@jest/globals';
import { InvalidOptionError, isRedundantProxyError, redundantProxy, type ProxyOptions } from '../../lib/index.js';

const U = 'http://127.0.0.1:1';

function optionNamed(options: unknown): string {
  try {
    const p = redundantProxy(options as ProxyOptions);
    void p.close();
  } catch (err) {
    expect(err).toBeInstanceOf(TypeError);
    expect(isRedundantProxyError(err)).toBe(true);
    expect((err as InvalidOptionError).code).toBe('RP_ERR_INVALID_OPTION');
    return (err as InvalidOptionError).option;
  }
  throw new Error('expected the options to be refused');
}

describe('redundantProxy options are validated at construction', () => {
  it.each([
    [undefined, 'options'],
    [{}, 'upstreams'],
    [{ upstreams: [] }, 'upstreams'],
    [{ upstreams: 'http://x' }, 'upstreams'],
    [{ upstreams: ['not a url'] }, 'upstreams[0]'],
    [{ upstreams: ['ftp://host'] }, 'upstreams[0]'],
    [{ upstreams: ['http://u:p@host'] }, 'upstreams[0]'],
    [{ upstreams: [U, U] }, 'upstreams[1]'],
    [{ upstreams: [{ id: 'has space', url: U }] }, 'upstreams[0].id'],
    [{ upstreams: [{ id: 'a', url: U }, { id: 'a', url: 'http://127.0.0.1:2' }] }, 'upstreams[1]'],
    [{ upstreams: [42] }, 'upstreams[0]'],
    [{ upstreams: [U], copies: 2 }, 'copies'],
    [{ upstreams: [U], copies: 0 }, 'copies'],
    [{ upstreams: [U], copies: 1.5 }, 'copies'],
    [{ upstreams: [U], hedge: { delay: -1 } }, 'hedge.delay'],
    [{ upstreams: [U], hedge: { delay: 'fast' } }, 'hedge.delay'],
    [{ upstreams: [U], hedge: { dealy: 5 } }, 'hedge.dealy'],
    [{ upstreams: [U], hedge: { maxExtraLoad: -0.5 } }, 'hedge.maxExtraLoad'],
    [{ upstreams: [U], hedge: 5 }, 'hedge'],
    [{ upstreams: [U], timeout: 0 }, 'timeout'],
    [{ upstreams: [U], timeout: Infinity }, 'timeout'],
    [{ upstreams: [U], maxBodySize: -1 }, 'maxBodySize'],
    [{ upstreams: [U], maxBodySize: '1mb' }, 'maxBodySize'],
    [{ upstreams: [U], connections: 0 }, 'connections'],
    [{ upstreams: [U], accept: true }, 'accept'],
    [{ upstreams: [U], isUpdate: 'POST' }, 'isUpdate'],
    [{ upstreams: [U], secret: 'short' }, 'secret'],
    [{ upstreams: [U], store: {} }, 'store'],
    [{ upstreams: [U], upstream: [U] }, 'upstream'],
    [{ upstreams: [U], select: 'fastest' }, 'select'],
    [{ upstreams: [U], select: 2 }, 'select'],
    [{ upstreams: [U, 'http://127.0.0.1:2'], select: { quorum: 3 } }, 'select.quorum'],
    [{ upstreams: [U, 'http://127.0.0.1:2'], copies: 1, select: { quorum: 2 } }, 'select.quorum'],
    [{ upstreams: [U], select: { quorum: 0 } }, 'select.quorum'],
    [{ upstreams: [U], select: { quorum: 1.5 } }, 'select.quorum'],
    [{ upstreams: [U], select: { quorum: 1, min: 2 } }, 'select.min'],
    [{ upstreams: [U], ejection: true }, 'ejection'],
    [{ upstreams: [U], ejection: { failures: 3 } }, 'ejection.failures'],
    [{ upstreams: [U], ejection: { consecutiveFailures: 0 } }, 'ejection.consecutiveFailures'],
    [{ upstreams: [U], ejection: { baseEjectionTime: -1 } }, 'ejection.baseEjectionTime'],
    [{ upstreams: [U], ejection: { baseEjectionTime: 10_000, maxEjectionTime: 5_000 } }, 'ejection.maxEjectionTime'],
    [{ upstreams: [U], ejection: { maxEjectedPercent: 101 } }, 'ejection.maxEjectedPercent'],
  ])('%j → names `%s`', (options, name) => {
    expect(optionNamed(options)).toBe(name);
  });

  it('names the option in the message', () => {
    expect(() => redundantProxy({ upstreams: [U], copies: 5 })).toThrow(/`copies`/);
  });

  it('accepts a valid configuration', async () => {
    const p = redundantProxy({
      upstreams: [U, { id: 'b', url: 'https://127.0.0.1:2/base' }],
      copies: 2,
      hedge: { delay: 'adaptive', maxExtraLoad: 0.2 },
      timeout: 1000,
      maxBodySize: 0,
      secret: 'a-long-enough-secret',
      accept: (r) => r.status < 400,
      isUpdate: () => false,
    });
    expect(typeof p).toBe('function');
    expect(typeof p.handler).toBe('function');
    await p.close();
  });

  it('never shows a secret in an option error: only its kind and length', () => {
    const secret = 'hunter2-short';
    let message = '';
    try {
      redundantProxy({ upstreams: ['http://127.0.0.1:1'], secret });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/`secret`/);
    expect(message).toMatch(/a string of 13 characters \(not shown\)/);
    expect(message).not.toContain(secret);
    expect(() => redundantProxy({ upstreams: ['http://127.0.0.1:1'], trustForwarded: 'yes' as unknown as boolean })).toThrow(/trustForwarded/);
  });
});
