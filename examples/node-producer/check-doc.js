#!/usr/bin/env node
'use strict';
// Validate an AsyncAPI document with the official parser (@asyncapi/parser).
//
//   node check-doc.js ../../docs/asyncapi.yaml
//
// Prints every error diagnostic (one line each, on stderr) and exits 1 if there is
// any; otherwise prints one line: the document's version and its counts of channels,
// operations and messages, and exits 0. Warnings are counted, not shown.

const { parseDocument, describe, ContractError, ERROR } = require('./contract');

async function main(argv) {
  if (argv.length !== 1 || argv[0].startsWith('-')) {
    process.stderr.write('usage: node check-doc.js <path to asyncapi.yaml>\n');
    return 2;
  }
  const path = argv[0];
  const { document, errors, diagnostics } = await parseDocument(path);
  if (errors.length) {
    for (const d of errors) process.stderr.write(`${path}: error: ${describe(d)}\n`);
    process.stderr.write(`${path}: ${errors.length} error(s): not a valid AsyncAPI document\n`);
    return 1;
  }
  const warnings = diagnostics.filter((d) => d.severity !== ERROR).length;
  process.stdout.write(`${path}: valid AsyncAPI ${document.version()}: `
    + `${document.channels().length} channels, ${document.operations().length} operations, `
    + `${document.messages().length} messages (${warnings} warning(s))\n`);
  return 0;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err) => {
  process.stderr.write(`check-doc: ${err instanceof ContractError ? err.message : err.stack}\n`);
  process.exitCode = 1;
});
