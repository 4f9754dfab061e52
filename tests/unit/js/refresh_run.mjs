// Drives the browser module from Node for tests/unit/test_browser_client.py: one client whose
// token function hands out the tokens given, in turn (the first short-lived), and that tries
// what the fleet refuses for good. Prints one JSON line: what it saw.
// argv: module path, URL, tokens (comma-separated), seconds to stay past the first token.
const [modulePath, url, tokens, staySeconds] = process.argv.slice(2);
const { Client } = await import(modulePath);
const pending = tokens.split(",");
const events = [];
const client = new Client([url], {
  token: () => (pending.length > 1 ? pending.shift() : pending[0]),
  firstDelayMs: 200,
  onEvent: (kind, detail) => events.push(kind === "closed" ? `closed ${detail.code}` : kind),
});
const refusals = [];
const messages = [];
client.subscribe("forbidden", (message) => refusals.push(message.refused ?? "delivered"));
client.subscribe("room", (message) => messages.push(message.data));
let rejected = null;
try {
  await client.publish("forbidden", "x");
} catch (error) {
  rejected = error.reason;
}
await new Promise((resolve) => setTimeout(resolve, Number(staySeconds) * 1000));
const offset = await client.publish("room", "after the first token's expiry");
await new Promise((resolve) => setTimeout(resolve, 300));
client.close();
console.log(JSON.stringify({ events, refusals, rejected, offset, messages }));
process.exit(0);
