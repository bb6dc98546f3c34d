'use strict';
// Staybook's message contract, read from its AsyncAPI document (docs/asyncapi.yaml).
//
// Everything a producer needs comes from the document: the exchanges' names and
// types (the channels' AMQP bindings, under the deployment's prefix), which
// (type, version) pairs a channel accepts, and a JSON Schema validator per message
// (ajv, compiled from the parsed document's dereferenced payload schemas: the whole
// body, the envelope with its typed `payload`).

const { Parser, fromFile } = require('@asyncapi/parser');
const Ajv = require('ajv');
const addFormats = require('ajv-formats');

const ERROR = 0; // diagnostic severity: error (1 warning, 2 info, 3 hint)

class ContractError extends Error {}

// One diagnostic as one line: where in the document, and what.
function describe(diagnostic) {
  const where = (diagnostic.path || []).join('.') || '(document)';
  return `${where}: ${diagnostic.message} [${diagnostic.code}]`;
}

// Parse and validate the document with the official parser.
// Returns {document, errors, diagnostics}; document is undefined when it has errors.
async function parseDocument(path) {
  const parser = new Parser();
  let output;
  try {
    output = await fromFile(parser, path).parse();
  } catch (err) {
    throw new ContractError(`cannot read the AsyncAPI document ${path}: ${err.message}`);
  }
  const errors = output.diagnostics.filter((d) => d.severity === ERROR);
  return { document: errors.length ? undefined : output.document, errors,
    diagnostics: output.diagnostics };
}

// The schema without the parser's (and any other) `x-` extension keys, so ajv can
// compile it in strict mode. Keys of `properties`-like maps are names, not keywords,
// and `const`/`enum`/`default`/`examples` hold data: those are left alone.
const NAME_MAPS = new Set(['properties', 'patternProperties', '$defs', 'definitions',
  'dependentSchemas']);
const DATA = new Set(['const', 'enum', 'default', 'examples', 'example']);

function withoutExtensions(schema, seen = new Map()) {
  if (Array.isArray(schema)) return schema.map((s) => withoutExtensions(s, seen));
  if (schema === null || typeof schema !== 'object') return schema;
  if (seen.has(schema)) {
    throw new ContractError('a message schema refers to itself (a cycle): this producer '
      + 'compiles dereferenced schemas and cannot take cyclic ones');
  }
  const out = {};
  seen.set(schema, out);
  for (const [key, value] of Object.entries(schema)) {
    if (key.startsWith('x-')) continue;
    if (DATA.has(key)) {
      out[key] = value;
    } else if (NAME_MAPS.has(key) && value && typeof value === 'object') {
      out[key] = Object.fromEntries(Object.entries(value)
        .map(([name, sub]) => [name, withoutExtensions(sub, seen)]));
    } else {
      out[key] = withoutExtensions(value, seen);
    }
  }
  seen.delete(schema);
  return out;
}

class Contract {
  constructor(document, params) {
    this.document = document;
    this.params = params;
    this.ajv = new Ajv({ allErrors: true, strict: true, strictTypes: false });
    addFormats(this.ajv);
    this._messages = new Map(); // channel id -> [{key, type, version, validate, ...}]
  }

  channel(id) {
    const channel = this.document.channels().get(id);
    if (!channel) throw new ContractError(`the document has no channel ${id}`);
    return channel;
  }

  // A broker name of the document under the deployment's prefix (params.prefix): the
  // document names every exchange and queue with the default prefix that its
  // info.x-staybook-prefix declares.
  brokerName(name) {
    const declared = this.document.json().info?.['x-staybook-prefix']?.default;
    const prefix = this.params.prefix;
    if (prefix === undefined || prefix === null || declared === undefined) return name;
    if (!name.startsWith(`${declared}.`)) {
      throw new ContractError(`${name} does not start with the document's prefix ${declared}`);
    }
    return `${prefix}${name.slice(declared.length)}`;
  }

  // The AMQP exchange the channel publishes to: {name, type, durable, autoDelete},
  // from its amqp binding (the channel's address is the routing key).
  exchange(channelId) {
    const channel = this.channel(channelId);
    const binding = channel.bindings().get('amqp');
    const value = binding ? binding.value() : {};
    if (value.is !== 'routingKey' || !value.exchange?.name) {
      throw new ContractError(`channel ${channelId} is not a routing key on a named exchange`);
    }
    const ex = value.exchange;
    return { name: this.brokerName(ex.name), type: ex.type, durable: ex.durable,
      autoDelete: ex.autoDelete };
  }

  // The channel's messages: {key, type, version, current, schema, validate, headers,
  // validateHeaders, amqpType} (headers: the AMQP properties a producer sets, when
  // documented; amqpType: the AMQP `type` property, the amqp binding's messageType).
  // `type` and `version` are the payload schema's `const`s; `current` marks the
  // newest version of a type (its key carries no `_v<N>` suffix when the document
  // follows Staybook's naming; otherwise the highest version).
  messages(channelId) {
    if (this._messages.has(channelId)) return this._messages.get(channelId);
    const entries = this.channel(channelId).messages().all().map((message) => {
      const key = message.id();
      if (!message.hasPayload()) {
        throw new ContractError(`message ${key} of channel ${channelId} has no payload schema`);
      }
      const schema = withoutExtensions(message.payload().json());
      const props = schema.properties || {};
      const type = props.type?.const ?? message.name();
      const version = props.version?.const;
      if (typeof type !== 'string' || !Number.isInteger(version)) {
        throw new ContractError(`message ${key}: its payload schema has no const type and `
          + 'version (properties.type.const, properties.version.const)');
      }
      let validate;
      try {
        validate = this.ajv.compile(schema);
      } catch (err) {
        throw new ContractError(`message ${key}: its payload schema does not compile: `
          + err.message);
      }
      const headers = message.hasHeaders() ? withoutExtensions(message.headers().json()) : null;
      let validateHeaders = () => true;
      if (headers) {
        try {
          validateHeaders = this.ajv.compile(headers);
        } catch (err) {
          throw new ContractError(`message ${key}: its headers schema does not compile: `
            + err.message);
        }
      }
      const amqp = message.bindings().get('amqp');
      return { key, type, version, schema, validate, headers, validateHeaders,
        name: message.name(), contentType: message.contentType(),
        amqpType: amqp?.value().messageType ?? type };
    });
    for (const entry of entries) {
      const same = entries.filter((e) => e.type === entry.type);
      const unsuffixed = same.find((e) => e.key === e.type);
      entry.current = unsuffixed ? entry === unsuffixed
        : entry.version === Math.max(...same.map((e) => e.version));
    }
    this._messages.set(channelId, entries);
    return entries;
  }

  // The message of `type` a channel accepts: its current version, or `version`.
  message(channelId, type, version) {
    const found = this.messages(channelId).find((e) => e.type === type
      && (version === undefined ? e.current : e.version === version));
    if (!found) {
      throw new ContractError(`channel ${channelId} takes no ${type}`
        + (version === undefined ? '' : ` version ${version}`));
    }
    return found;
  }

  // Older versions of `type` the channel still accepts, oldest first.
  olderVersions(channelId, type) {
    return this.messages(channelId).filter((e) => e.type === type && !e.current)
      .sort((a, b) => a.version - b.version);
  }
}

// ajv's errors as one readable line: '/payload/price_per_night must be integer; ...'.
function explain(errors) {
  return (errors || []).map((e) => `${e.instancePath || '(body)'} ${e.message}`).join('; ');
}

// Load the document at `path`; params fill the addresses' `{...}` placeholders
// (e.g. {prefix: 'staybook'}). Throws ContractError with one line on any problem.
async function loadContract(path, params = {}) {
  const { document, errors } = await parseDocument(path);
  if (!document) {
    throw new ContractError(`${path} is not a valid AsyncAPI document `
      + `(${errors.length} error(s)), first: ${describe(errors[0])}`);
  }
  return new Contract(document, params);
}

module.exports = { loadContract, parseDocument, describe, explain, Contract, ContractError,
  ERROR };
