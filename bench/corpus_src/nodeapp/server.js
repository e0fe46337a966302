'use strict';
// Local dashboard: serves the latest readings over HTTP and WebSocket, bridges them to MQTT.
const http = require('http');
const express = require('express');
const { WebSocketServer } = require('ws');
const pino = require('pino');
const { loadConfig } = require('./lib/config');
const { Bridge } = require('./lib/bridge');
const { Store } = require('./lib/store');

const log = pino({ level: process.env.LOG_LEVEL || 'info' });
const cfg = loadConfig(process.env.DASHBOARD_CONFIG || '/etc/dashboard/config.yaml');
const store = new Store(cfg.history);
const bridge = new Bridge(cfg, store, log);

const app = express();
app.use(express.json({ limit: '256kb' }));
app.get('/healthz', (req, res) => res.json({ ok: bridge.connected, version: require('./package.json').version }));
app.get('/readings', (req, res) => res.json(store.latest()));
app.get('/readings/:id', (req, res) => {
  const series = store.series(req.params.id);
  if (!series) return res.status(404).json({ error: 'unknown sensor' });
  res.json(series);
});
app.post('/readings', (req, res) => {
  const n = store.ingest(req.body.readings || []);
  bridge.publish(req.body.readings || []);
  res.json({ accepted: n });
});

const server = http.createServer(app);
const wss = new WebSocketServer({ server, path: '/live' });
store.on('reading', (r) => {
  const msg = JSON.stringify(r);
  for (const client of wss.clients) if (client.readyState === 1) client.send(msg);
});
bridge.start();
server.listen(cfg.port, () => log.info({ port: cfg.port }, 'dashboard listening'));
