'use strict';
const mqtt = require('mqtt');
const axios = require('axios');

class Bridge {
  constructor(cfg, store, log) {
    this.cfg = cfg;
    this.store = store;
    this.log = log;
    this.client = null;
    this.connected = false;
  }

  start() {
    this.client = mqtt.connect(this.cfg.mqtt.url, { reconnectPeriod: 5000 });
    this.client.on('connect', () => { this.connected = true; this.log.info('mqtt connected'); });
    this.client.on('close', () => { this.connected = false; });
    this.client.on('error', (e) => this.log.warn({ err: e.message }, 'mqtt error'));
  }

  async publish(readings) {
    if (this.connected) {
      this.client.publish(this.cfg.mqtt.topic, JSON.stringify(readings), { qos: this.cfg.mqtt.qos });
    }
    if (this.cfg.forward) {
      try {
        await axios.post(this.cfg.forward, { readings }, { timeout: 10000 });
      } catch (e) {
        this.log.warn({ err: e.message }, 'forward failed');
      }
    }
  }
}

module.exports = { Bridge };
