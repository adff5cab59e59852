package dev.forwarding.gateway.adapter;

import java.util.logging.Logger;

/** SIGTERM and SIGINT as an event rather than the JVM's exit, where the JDK allows it. */
final class Signals {
  private Signals() {}

  static boolean install(Runnable onSignal) {
    try {
      for (String name : new String[] {"TERM", "INT"}) {
        sun.misc.Signal.handle(new sun.misc.Signal(name), s -> onSignal.run());
      }
      return true;
    } catch (Throwable e) {
      Logger.getLogger(Signals.class.getName()).warning("signal handling unavailable: " + e);
      return false;
    }
  }
}
