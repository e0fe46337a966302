'use strict';
const fs = require('fs');
const YAML = require('yaml');
const _ = require('lodash');

const DEFAULTS = { port: 8081, history: 720, mqtt: { url: 'mqtt://localhost:1883', topic: 'site/readings', qos: 1 }, forward: null };

function loadConfig(path) {
  let data = {};
  if (fs.existsSync(path)) data = YAML.parse(fs.readFileSync(path, 'utf8')) || {};
  const cfg = _.merge({}, DEFAULTS, data);
  if (!Number.isInteger(cfg.port) || cfg.port <= 0) throw new Error(`${path}: bad port ${cfg.port}`);
  if (cfg.history < 1) throw new Error(`${path}: history must be at least 1`);
  return cfg;
}

module.exports = { loadConfig, DEFAULTS };
