"""Local HTTP API: health, sensor statistics, uplink state."""

from flask import Flask, abort, jsonify

from . import __version__


def create_app(cfg, poller, uplink):
    app = Flask("gateway")

    @app.get("/healthz")
    def healthz():
        ok = poller.is_alive() and (uplink.is_alive() or not cfg.uplink_url)
        return jsonify(ok=ok, version=__version__), (200 if ok else 503)

    @app.get("/sensors")
    def sensors():
        return jsonify([{"id": s["id"], "name": s.get("name", "")} for s in cfg.sensors])

    @app.get("/sensors/<int:sensor_id>")
    def sensor(sensor_id):
        stats = poller.buffer.stats(sensor_id)
        if stats is None:
            abort(404)
        return jsonify(stats)

    @app.get("/sensors/<int:sensor_id>/last")
    def sensor_last(sensor_id):
        hist = poller.history.get(sensor_id)
        if not hist:
            abort(404)
        return jsonify(id=sensor_id, value=hist[-1], filter=cfg.filter)

    @app.get("/uplink")
    def uplink_state():
        return jsonify(sent=uplink.sent, failures=uplink.failures, queued=poller.buffer.count,
                       dropped=poller.buffer.dropped)

    return app
