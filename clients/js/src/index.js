/**
 * The gateway's JavaScript client: an ES module without runtime dependencies, for browsers and
 * Node (pass `WebSocket` from the `ws` package where there is no global one).
 */
export { Client } from './client.js';
export { Subscription } from './subscription.js';
export { GatewayError } from './errors.js';
export { Backoff } from './backoff.js';
