package dev.shelfcast.flink;

import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.types.Row;

/**
 * The event time the source's watermark may use: the record's `ts` when it is a valid event dated at most
 * `maxAheadMs` after this machine's clock, else 0 (1970), which never moves a watermark. One record with a
 * wrong clock (or an invalid one) thus cannot push event time ahead and make every on-time event late.
 * The job windows only records whose event time equals their `ts`, and dead-letters valid ones whose time
 * is 0 as `future_ts`. Records are parsed with {@link ParseEvent#parse}, so "valid" means the same here.
 */
public class EventTime extends ScalarFunction {
  private static final int TS = 3;
  private static final int ERROR = 7;

  public long eval(String raw, long maxAheadMs) {
    Row event = ParseEvent.parse(raw);
    if (event.getField(ERROR) != null) {
      return 0L;
    }
    long ts = (Long) event.getField(TS);
    return ts <= System.currentTimeMillis() + maxAheadMs ? ts : 0L;
  }

  @Override
  public boolean isDeterministic() {
    return false; // it reads the clock
  }
}
