#!/usr/bin/env node
// Runs many rfc9421.mjs commands in one node process, for tests that need thousands of them.
//
//   stdin:  a JSON array of commands, each exactly what rfc9421.mjs reads on its stdin
//   stdout: a JSON array with one {"status": <the exit status rfc9421.mjs would give>,
//           "answer": <its JSON answer>} per command, in order
//
// The work is done by rfc9421.mjs's own code, loaded once: its source is imported as is except for
// its last line (`await main();`, which would read stdin), replaced by an export of its operations,
// and its `createRequire(import.meta.url)`, pointed at its own file so that its npm packages resolve
// from here. `run` below does what its `main` does for one command. Commands run one after another,
// so the script's clock pinning (Date.now during a verification) stays per command.

import { readFile } from 'node:fs/promises';

const SCRIPT = new URL('./rfc9421.mjs', import.meta.url);

function replaceOnce(text, search, replacement) {
  const at = text.indexOf(search);
  if (at === -1 || text.indexOf(search, at + 1) !== -1) {
    throw new Error(`rfc9421.mjs changed: expected exactly one ${JSON.stringify(search)}`);
  }
  return text.slice(0, at) + replacement + text.slice(at + search.length);
}

async function loadScript() {
  let source = await readFile(SCRIPT, 'utf8');
  source = replaceOnce(source, 'createRequire(import.meta.url)', `createRequire(${JSON.stringify(SCRIPT.href)})`);
  source = replaceOnce(source, '\nawait main();', '\nexport { OPS, UsageError };');
  return import(`data:text/javascript;base64,${Buffer.from(source, 'utf8').toString('base64')}`);
}

async function readAll(stream) {
  const chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

const { OPS, UsageError } = await loadScript();

// rfc9421.mjs's main(), for one command already parsed.
async function run(cmd) {
  try {
    if (cmd === null || typeof cmd !== 'object' || !Object.hasOwn(OPS, cmd.op)) {
      throw new UsageError(`unknown op; expected one of ${Object.keys(OPS).join(', ')}`);
    }
    return { status: 0, answer: await OPS[cmd.op](cmd) };
  } catch (e) {
    const error = e instanceof UsageError ? e.message : `${e.constructor?.name ?? e.name}: ${e.message}`;
    return { status: 2, answer: { error } };
  }
}

const commands = JSON.parse(await readAll(process.stdin));
if (!Array.isArray(commands)) {
  throw new Error('stdin must be a JSON array of commands');
}
const results = [];
for (const command of commands) {
  results.push(await run(command));
}
process.stdout.write(`${JSON.stringify(results)}\n`);
