/**
 * A request the gateway (or the client) refused. `code` is the gateway's error code
 * (`bad_request`, `forbidden`, `not_found`, `limit_exceeded`, `internal`, `canceled`) or one of
 * the client's own: `timeout` (no reply in `requestTimeoutMs`), `disconnected` (the connection
 * ended before the reply came: the request may or may not have taken effect), `queue_full`
 * (more requests waiting than `maxQueuedRequests`), `closed` (the client was closed).
 */
export class GatewayError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = 'GatewayError';
    this.code = code;
  }
}
