// Compiled (never run) by test/types.test.js: the declarations fit an
// ordinary Express program.
import express from 'express';
import { serve, type Backend, type ServeOptions } from '..';

const app = express();
app.get('/hello', (req, res) => {
  const id: string | undefined = req.forwarding?.context.request_id;
  res.send(`hello ${id ?? ''}`);
});

const options: ServeOptions = {
  gateway: 'http://127.0.0.1:8090',
  service: 'hello',
  routes: ['/hello', { path_prefix: '/events', stream: true }],
};
const started: Promise<Backend> = serve(app, options);
started.then((b) => b.shutdown());
