// pq-server with the official OpenAI client library (npm "openai", pinned in package.json and
// package-lock.json): models, chat completions and completions, streamed and not, and its errors.
// Run by tests/server/test_openai_node.py, which starts the server and passes what to expect:
//   node openai_client.mjs '{"port": ..., "key": ..., "prompt": ..., "completion": ..., "messages": [...],
//                            "chat": ..., "max_tokens": ..., "model": ...}'
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const want = JSON.parse(process.argv[2]);
const client = new OpenAI({ baseURL: `http://127.0.0.1:${want.port}/v1`, apiKey: want.key, maxRetries: 0, timeout: 300000 });
const greedy = { temperature: 0, max_tokens: want.max_tokens };

async function main() {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [want.model]);
  console.log('ok models.list');

  const chat = await client.chat.completions.create({ model: want.model, messages: want.messages, ...greedy });
  assert.equal(chat.object, 'chat.completion');
  assert.equal(chat.choices.length, 1);
  assert.equal(chat.choices[0].message.role, 'assistant');
  assert.equal(chat.choices[0].message.content, want.chat);
  assert.equal(chat.choices[0].finish_reason, 'length');
  assert.equal(chat.usage.completion_tokens, want.max_tokens);
  assert.equal(chat.usage.total_tokens, chat.usage.prompt_tokens + chat.usage.completion_tokens);
  console.log('ok chat.completions.create');

  const stream = await client.chat.completions.create({
    model: want.model, messages: want.messages, ...greedy, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(text, want.chat);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, want.max_tokens);
  console.log('ok chat.completions.create stream');

  const done = await client.completions.create({ model: want.model, prompt: want.prompt, ...greedy });
  assert.equal(done.object, 'text_completion');
  assert.equal(done.choices[0].text, want.completion);
  assert.equal(done.choices[0].finish_reason, 'length');
  console.log('ok completions.create');

  const cstream = await client.completions.create({ model: want.model, prompt: want.prompt, ...greedy, stream: true });
  let ctext = '';
  for await (const chunk of cstream) for (const c of chunk.choices) ctext += c.text;
  assert.equal(ctext, want.completion);
  console.log('ok completions.create stream');

  // A stream the client abandons half way (the server frees the slot; the next request runs).
  const abandoned = await client.chat.completions.create({
    model: want.model, messages: want.messages, temperature: 0, max_tokens: 400, stream: true,
  });
  let n = 0;
  for await (const chunk of abandoned) if (++n === 3) break;  // break closes the connection
  assert.equal(n, 3);
  console.log('ok abandoned stream');

  // Errors: the library's classes for the server's statuses.
  await assert.rejects(client.chat.completions.create({ model: want.model, messages: [] }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && typeof e.message === 'string');
  await assert.rejects(client.completions.create({ model: want.model, prompt: want.prompt, n: 2 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400);
  const wrongKey = new OpenAI({ baseURL: `http://127.0.0.1:${want.port}/v1`, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(wrongKey.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
  await assert.rejects(client.get('/nothing-here'), (e) => e instanceof OpenAI.NotFoundError && e.status === 404);
  console.log('ok errors');
}

main().then(() => console.log('all ok'), (e) => {
  console.error(e);
  process.exit(1);
});
