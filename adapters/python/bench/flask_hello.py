"""The bare answer as a Flask app (WSGI), for bench/overhead.py."""

from flask import Flask

app = Flask(__name__)


@app.route("/hello")
def hello():
    return "hello", 200, {"content-type": "text/plain"}
