'use strict';
const { EventEmitter } = require('events');

class Store extends EventEmitter {
  constructor(history) {
    super();
    this.history = history;
    this.bySensor = new Map();
  }

  ingest(readings) {
    let n = 0;
    for (const r of readings) {
      if (r == null || r.id == null || typeof r.v !== 'number') continue;
      const key = String(r.id);
      if (!this.bySensor.has(key)) this.bySensor.set(key, []);
      const series = this.bySensor.get(key);
      series.push({ t: r.t, v: r.v });
      if (series.length > this.history) series.splice(0, series.length - this.history);
      this.emit('reading', { id: key, t: r.t, v: r.v });
      n++;
    }
    return n;
  }

  latest() {
    const out = {};
    for (const [id, series] of this.bySensor) out[id] = series[series.length - 1];
    return out;
  }

  series(id) {
    return this.bySensor.get(String(id)) || null;
  }
}

module.exports = { Store };
