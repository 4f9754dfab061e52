// Drives the browser module (service/wssfleet/static/wssfleet-client.js) from Node for
// tests/unit/test_browser_client.py: one subscriber client and one publisher client, each
// line of stdout a JSON event the test reads ("ready" once subscribed, "done" at the end).
// argv: module path, subscriber URLs (comma-separated), publisher URLs, token, count,
// interval in ms.
const [modulePath, subscriberUrls, publisherUrls, token, count, intervalMs] =
  process.argv.slice(2);
const { Client } = await import(modulePath);
const say = (event) => console.log(JSON.stringify(event));

const events = [];
const subscriber = new Client(subscriberUrls.split(","), { token: () => token, firstDelayMs: 200 });
const received = [];
let gaps = 0;
const subscribed = new Promise((resolve) => {
  subscriber.onEvent = (kind, detail) => {
    events.push(kind === "closed" ? `closed ${detail.code}` : kind);
    if (kind === "connected") setTimeout(resolve, 300);
  };
});
subscriber.subscribe("room", (message) => {
  if (message.gap) gaps += 1;
  else received.push(message.data);
});
const publisher = new Client(publisherUrls.split(","), { token: () => token, firstDelayMs: 200 });
await subscribed;
say({ event: "ready" });
const offsets = [];
for (let number = 0; number < Number(count); number += 1) {
  offsets.push(await publisher.publish("room", number, `n-${number}`));
  await new Promise((resolve) => setTimeout(resolve, Number(intervalMs)));
  if (number === 10) say({ event: "published 10" });
}
const deadline = Date.now() + 20000;
while (received.length < Number(count) && Date.now() < deadline) {
  await new Promise((resolve) => setTimeout(resolve, 100));
}
say({ event: "done", received, offsets, gaps, events });
subscriber.close();
publisher.close();
process.exit(0);
