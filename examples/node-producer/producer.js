#!/usr/bin/env node
'use strict';
// A Staybook producer in Node.js, written from the AsyncAPI document and the README
// only: it runs the talk's scenario and the bad-input cases against a running node
// and checks every reply.
//
//   node producer.js --url amqp://guest:guest@localhost:5672/%2F --prefix staybook \
//       --doc ../../docs/asyncapi.yaml [--apartment-suffix X] [--timeout-ms 10000]
//
// Prints one JSON line per step, {"step", "status", "reason", "ok"} (plus "expected"
// and "detail" when a step went wrong), and exits 0 only if every step got what it
// expected; otherwise 1, with one line on stderr per failure.
//
// Apartments it writes: apt-<suffix> (the scenario), apt-<suffix>-v<N> (one per
// older AddApartment version the document lists) and apt-<suffix>-bad (the bad
// input's target, which must stay empty).

const crypto = require('node:crypto');
const { isDeepStrictEqual, parseArgs } = require('node:util');
const amqp = require('amqplib');
const { loadContract, explain, ContractError } = require('./contract');

const DIRECT_REPLY_TO = 'amq.rabbitmq.reply-to';
const COMMANDS = 'commands'; // channel ids in the document
const QUERIES = 'queries';
const REPLY = 'reply';
const CITY = 'Lisbon';
const OWNER = 'olga';
// Nights [start, end): after the tests' pinned today (2030-01-07) and the real one.
const STAY = { start: '2031-03-03', end: '2031-03-07' };
const OVERLAP = { start: '2031-03-05', end: '2031-03-09' };

// A failure we expected could happen (broker down, no such exchange, bad option):
// reported as one line, without a stack trace.
class Fatal extends Error {}

const newId = () => `node-${crypto.randomBytes(8).toString('hex')}`;
const redact = (url) => url.replace(/\/\/([^:/@]*):[^@]*@/, '//$1:***@');

// Connects, publishes with confirms and awaits replies on direct reply-to, matched by
// the AMQP correlation_id the node copies onto each reply.
class Connection {
  constructor(timeoutMs) {
    this.timeoutMs = timeoutMs;
    this.pending = new Map(); // correlation_id -> {resolve, reject, timer}
    this.closedBecause = null;
  }

  async open(url) {
    try {
      this.conn = await amqp.connect(url);
    } catch (err) {
      throw new Fatal(`cannot connect to ${redact(url)} (${err.code || err.message}): is `
        + 'RabbitMQ running there? `make demo` (or `staybook broker start`) starts one');
    }
    this.conn.on('error', () => {}); // reported through 'close' and the pending requests
    this.conn.on('close', () => this.failAll('the connection closed'));
    this.channel = await this.conn.createConfirmChannel();
    this.channel.on('error', (err) => { this.closedBecause = err.message; });
    this.channel.on('close', () => this.failAll(
      `the channel closed${this.closedBecause ? `: ${this.closedBecause}` : ''}`));
    // A mandatory message no queue took comes back: no reply will follow.
    this.channel.on('return', (msg) => this.settle(msg.properties.correlationId, null,
      new Error(`returned unroutable by ${msg.fields.exchange} (${msg.fields.replyText}): `
        + 'no queue is bound for it')));
    // Direct reply-to: consume (no-ack) before the first publish that names it.
    await this.channel.consume(DIRECT_REPLY_TO, (msg) => this.onReply(msg), { noAck: true });
  }

  // Every exchange the run publishes to must exist: a node declares them.
  async checkExchanges(names) {
    for (const name of names) {
      try {
        await this.channel.checkExchange(name);
      } catch {
        throw new Fatal(`the exchange ${name} does not exist: is a Staybook node running `
          + 'on this broker with that prefix (--prefix)?');
      }
    }
  }

  onReply(msg) {
    if (!msg) return; // the consumer was cancelled
    let body;
    try {
      body = JSON.parse(msg.content.toString('utf8'));
    } catch (err) {
      this.settle(msg.properties.correlationId, null, new Error(`a reply is not JSON: ${err.message}`));
      return;
    }
    this.settle(msg.properties.correlationId, body);
  }

  settle(correlationId, body, error) {
    const waiter = this.pending.get(correlationId);
    if (!waiter) return; // late (after its timeout) or not ours
    this.pending.delete(correlationId);
    clearTimeout(waiter.timer);
    if (error) waiter.reject(error);
    else waiter.resolve(body);
  }

  failAll(why) {
    for (const id of [...this.pending.keys()]) this.settle(id, null, new Error(why));
  }

  // Publish `content` (a Buffer) and await its reply: the reply's parsed body.
  async request(exchange, routingKey, content, properties) {
    const id = properties.correlationId;
    if (this.pending.has(id)) throw new Error(`a request with correlation_id ${id} is pending`);
    const reply = new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.settle(id, null, new Error(
        `no reply within ${this.timeoutMs} ms`)), this.timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
    });
    reply.catch(() => {}); // awaited below; never an unhandled rejection meanwhile
    const props = { ...properties, replyTo: DIRECT_REPLY_TO, mandatory: true };
    try {
      await new Promise((resolve, reject) => {
        this.channel.publish(exchange, routingKey, content, props, (err) => (err
          ? reject(new Error('the broker refused the message (nack): a full queue refuses '
            + 'new messages, retry later'))
          : resolve()));
      });
    } catch (err) {
      this.settle(id, null, err);
    }
    return reply;
  }

  async close() {
    try {
      await this.conn.close();
    } catch {
      // already closed
    }
  }
}

// The producer's view of the contract: envelopes, local validation, publishing.
class Staybook {
  constructor(contract, connection) {
    this.contract = contract;
    this.connection = connection;
    this.commands = contract.exchange(COMMANDS).name;
    this.queries = contract.exchange(QUERIES).name;
  }

  // The envelope around `payload`, for `message` (a contract entry: type, version).
  envelope(message, apartmentId, payload, messageId = newId()) {
    return {
      message_id: messageId,
      correlation_id: messageId, // a new conversation
      causation_id: null,
      type: message.type,
      version: message.version,
      occurred_at: new Date().toISOString(),
      apartment_id: apartmentId,
      payload,
    };
  }

  // The AMQP properties for `body`, checked against the message's headers schema.
  properties(message, body) {
    const headers = {
      message_id: body.message_id,
      correlation_id: body.correlation_id,
      reply_to: DIRECT_REPLY_TO,
      content_type: 'application/json',
      delivery_mode: 2, // persistent
    };
    if (message && !message.validateHeaders(headers)) {
      throw new Error(`the AMQP properties do not match the document's headers of `
        + `${message.key}: ${explain(message.validateHeaders.errors)}`);
    }
    return {
      messageId: headers.message_id,
      correlationId: headers.correlation_id,
      type: message ? message.amqpType : body.type,
      contentType: headers.content_type,
      deliveryMode: headers.delivery_mode,
    };
  }

  // Publish a command and await its reply. With `raw` (a Buffer) the body is sent
  // as is, unchecked: for the bad-input cases.
  async command(message, body, { routingKey = body.apartment_id, raw } = {}) {
    if (!raw && !message.validate(body)) {
      throw new Error(`refusing to send an invalid ${message.key}: `
        + explain(message.validate.errors));
    }
    const content = raw || Buffer.from(JSON.stringify(body));
    const reply = await this.connection.request(this.commands, routingKey, content,
      this.properties(raw ? null : message, body));
    return this.checkedReply(reply, 'CommandResult');
  }

  async query(message, body) {
    if (!message.validate(body)) {
      throw new Error(`refusing to send an invalid ${message.key}: `
        + explain(message.validate.errors));
    }
    const reply = await this.connection.request(this.queries, '',
      Buffer.from(JSON.stringify(body)), this.properties(message, body));
    return this.checkedReply(reply, 'SearchResults');
  }

  // A reply must be the expected type and match the document's schema for it.
  checkedReply(reply, type) {
    if (reply?.type !== type) {
      throw new Error(`expected a ${type} reply, got ${JSON.stringify(reply).slice(0, 200)}`);
    }
    const schema = this.contract.message(REPLY, type);
    if (!schema.validate(reply)) {
      throw new Error(`the ${type} reply does not match the document: `
        + explain(schema.validate.errors));
    }
    return reply;
  }
}

// Does the current version of `message` have a payload field `name`?
const hasField = (message, name) => Boolean(
  message.schema.properties?.payload?.properties?.[name]);

// A short stable number from a string (to give each run its own price).
const hashNumber = (text, modulo) => crypto.createHash('sha256').update(text).digest()
  .readUInt32BE(0) % modulo;

// The steps: each returns {status, reason, ok, expected?, detail?}.
function steps(staybook, contract, suffix) {
  const apt = `apt-${suffix}`;
  const bad = `${apt}-bad`;
  const add = contract.message(COMMANDS, 'AddApartment');
  const request = contract.message(COMMANDS, 'RequestReservation');
  const accept = contract.message(COMMANDS, 'AcceptReservation');
  const search = contract.message(QUERIES, 'SearchApartments');
  const price = 10_000 + hashNumber(suffix, 90_000); // cents; one price per run
  const listing = (id) => ({
    owner_id: OWNER, city: CITY, title: `Flat ${id}`, description: 'Near the river.',
    price_per_night: price, capacity: 4,
  });
  // The current AddApartment: with a currency once the document's version has one.
  const current = (id) => ({ ...listing(id),
    ...(hasField(add, 'currency') ? { currency: 'EUR' } : {}) });
  const state = {};

  // A command's reply as a step: status and reason compared to the expectation.
  const expect = (reply, status, reason = null) => {
    const got = reply.payload;
    const ok = got.status === status && (got.reason ?? null) === reason;
    return { status: got.status, reason: got.reason ?? null, ok,
      ...(ok ? {} : { expected: { status, reason }, detail: got.detail }) };
  };
  const searchFor = async (payload, wanted) => {
    const body = staybook.envelope(search, null, { city: CITY, min_price: price,
      max_price: price, limit: 100, wait_ms: 5000, ...payload });
    const reply = (await staybook.query(search, body)).payload;
    const found = reply.apartments.some((a) => a.apartment_id === apt);
    const ok = reply.caught_up === true && found === wanted;
    return { status: found ? 'found' : 'not_found', reason: `caught_up=${reply.caught_up}`, ok,
      ...(ok ? {} : { expected: { status: wanted ? 'found' : 'not_found',
        reason: 'caught_up=true' } }) };
  };

  return [
    ['add_apartment', async () => {
      state.add = staybook.envelope(add, apt, current(apt));
      state.added = await staybook.command(add, state.add);
      return expect(state.added, 'ok');
    }],
    ['request_reservation', async () => expect(await staybook.command(request,
      staybook.envelope(request, apt, { reservation_id: `res-${suffix}-1`, guest_id: 'ana',
        ...STAY, guests: 2, card_token: 'tok_visa', card_last4: '4242' })), 'ok')],
    ['accept_reservation', async () => {
      state.accepted = await staybook.command(accept, staybook.envelope(accept, apt,
        { reservation_id: `res-${suffix}-1`, owner_id: OWNER }));
      return expect(state.accepted, 'ok');
    }],
    ['overlapping_request', async () => expect(await staybook.command(request,
      staybook.envelope(request, apt, { reservation_id: `res-${suffix}-2`, guest_id: 'ben',
        ...OVERLAP, guests: 2 })), 'rejected', 'already_taken')],
    ['search_after_add', () => searchFor({ after: state.added.payload.position }, true)],
    ['search_booked_nights', () => searchFor({ after: state.accepted.payload.position,
      start: STAY.start, end: STAY.end }, false)],
    ['resend_same_message_id', async () => {
      const again = await staybook.command(add, state.add);
      const step = expect(again, 'ok');
      if (step.ok && !isDeepStrictEqual(again.payload, state.added.payload)) {
        return { ...step, ok: false, detail: 'the reply differs from the first one' };
      }
      return step;
    }],
    ...contract.olderVersions(COMMANDS, 'AddApartment').map((older) => [
      `add_apartment_v${older.version}`, async () => {
        const id = `${apt}-v${older.version}`;
        return expect(await staybook.command(older, staybook.envelope(older, id, listing(id))),
          'ok');
      }]),
    // Bad input: each refused with status error and its reason.
    ['not_json', async () => {
      const body = staybook.envelope(add, bad, current(bad));
      return expect(await staybook.command(add, body, {
        raw: Buffer.from('{"type": "AddApartment", this is not JSON') }), 'error', 'not_json');
    }],
    ['unknown_type', async () => {
      const body = { ...staybook.envelope(add, bad, current(bad)), type: 'PaintApartment' };
      return expect(await staybook.command(add, body, { raw: Buffer.from(JSON.stringify(body)) }),
        'error', 'unknown_type');
    }],
    ['unsupported_version', async () => {
      const body = { ...staybook.envelope(add, bad, current(bad)), version: 99 };
      return expect(await staybook.command(add, body, { raw: Buffer.from(JSON.stringify(body)) }),
        'error', 'unsupported_version');
    }],
    ['schema_error_local', async () => {
      // A price as text: the document says integer, and so does the node.
      state.wrongPrice = staybook.envelope(add, bad, { ...current(bad), price_per_night: '120.00' });
      const valid = add.validate(state.wrongPrice);
      const why = explain(add.validate.errors);
      const ok = !valid && why.includes('/payload/price_per_night');
      return { status: valid ? 'valid' : 'invalid', reason: why || null, ok,
        ...(ok ? {} : { expected: { status: 'invalid', reason: '/payload/price_per_night ...' } }) };
    }],
    ['schema_error', async () => expect(await staybook.command(add, state.wrongPrice,
      { raw: Buffer.from(JSON.stringify(state.wrongPrice)) }), 'error', 'schema_error')],
    ['wrong_routing_key', async () => expect(await staybook.command(add,
      staybook.envelope(add, bad, current(bad)), { routingKey: apt }),
    'error', 'wrong_routing_key')],
    ['idempotency_conflict', async () => {
      const other = { ...state.add, payload: { ...state.add.payload, title: 'Another flat' } };
      return expect(await staybook.command(add, other), 'error', 'idempotency_conflict');
    }],
  ];
}

function options(argv) {
  let values;
  try {
    ({ values } = parseArgs({ args: argv, options: {
      url: { type: 'string' },
      prefix: { type: 'string' },
      doc: { type: 'string', default: `${__dirname}/../../docs/asyncapi.yaml` },
      'apartment-suffix': { type: 'string', default: crypto.randomBytes(4).toString('hex') },
      'timeout-ms': { type: 'string', default: '10000' },
      help: { type: 'boolean', short: 'h' },
    } }));
  } catch (err) {
    throw new Fatal(`${err.message} (see --help)`);
  }
  if (values.help) return null;
  if (!values.url) throw new Fatal('--url amqp://user:password@host:port/vhost is required');
  const timeoutMs = Number(values['timeout-ms']);
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) {
    throw new Fatal('--timeout-ms must be a positive integer');
  }
  if (!/^[A-Za-z0-9_.:@-]{1,60}$/.test(values['apartment-suffix'])) {
    throw new Fatal('--apartment-suffix: 1-60 of A-Z a-z 0-9 _ . : @ -');
  }
  return { ...values, timeoutMs, suffix: values['apartment-suffix'] };
}

const USAGE = 'usage: node producer.js --url amqp://guest:guest@localhost:5672/%2F '
  + '[--prefix staybook] [--doc ../../docs/asyncapi.yaml] [--apartment-suffix X] '
  + '[--timeout-ms 10000]\n';

async function main(argv) {
  const opts = options(argv);
  if (!opts) {
    process.stdout.write(USAGE);
    return 0;
  }
  const params = opts.prefix ? { prefix: opts.prefix } : {};
  const contract = await loadContract(opts.doc, params);
  const connection = new Connection(opts.timeoutMs);
  const staybook = new Staybook(contract, connection);
  await connection.open(opts.url);
  let failures = 0;
  try {
    await connection.checkExchanges([staybook.commands, staybook.queries]);
    for (const [name, run] of steps(staybook, contract, opts.suffix)) {
      let result;
      try {
        result = await run();
      } catch (err) {
        result = { status: null, reason: null, ok: false, detail: err.message };
      }
      process.stdout.write(`${JSON.stringify({ step: name, ...result })}\n`);
      if (!result.ok) {
        failures += 1;
        const wanted = result.expected ? `expected ${JSON.stringify(result.expected)}, ` : '';
        process.stderr.write(`step ${name} failed: ${wanted}got status ${result.status}, `
          + `reason ${result.reason}${result.detail ? ` (${result.detail})` : ''}\n`);
      }
    }
  } finally {
    await connection.close();
  }
  return failures ? 1 : 0;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err) => {
  const expected = err instanceof Fatal || err instanceof ContractError;
  process.stderr.write(`producer: ${expected ? err.message : err.stack}\n`);
  process.exitCode = 1;
});
