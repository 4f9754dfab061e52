// Drives the browser module from Node for tests/unit/test_browser_client.py: one client that
// stays connected for a while with probeAfterMs given, then closes.
// argv: module path, URL, probeAfterMs, seconds to stay.
const [modulePath, url, probeAfterMs, staySeconds] = process.argv.slice(2);
const { Client } = await import(modulePath);
const events = [];
const client = new Client([url], {
  token: "t",
  probeAfterMs: Number(probeAfterMs),
  onEvent: (kind) => events.push(kind),
});
await new Promise((resolve) => setTimeout(resolve, Number(staySeconds) * 1000));
client.close();
console.log(JSON.stringify({ events }));
process.exit(0);
