package dev.shelfcast.flink;

import java.util.regex.Pattern;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.TableFunction;
import org.apache.flink.types.Row;

/**
 * Parses one raw event once and checks it against the event contract (shelfcast.contracts.Event, with
 * ts already in epoch milliseconds as on the topic). Emits exactly one row: the fields, and in `error`
 * the first broken field and why, or NULL. Built-in JSON_VALUE re-parses the document on every call,
 * which made parsing most of the job's CPU.
 */
@FunctionHint(
    output =
        @DataTypeHint(
            "ROW<event_id STRING, event_type STRING, sku STRING, ts BIGINT, qty INT, price DOUBLE,"
                + " currency STRING, error STRING>"))
public class ParseEvent extends TableFunction<Row> {
  private static final ObjectMapper JSON = new ObjectMapper();
  private static final Pattern SKU = Pattern.compile("[A-Za-z0-9][A-Za-z0-9._/-]{0,63}");
  private static final Pattern CURRENCY = Pattern.compile("[A-Z]{3}");
  private static final long MIN_TS = 946_684_800_000L; // 2000-01-01
  private static final long MAX_TS = 4_102_444_800_000L; // 2100-01-01

  public void eval(String raw) {
    collect(parse(raw));
  }

  /** The row `eval` emits; shared with {@link EventTime}, so both agree on which records are valid. */
  static Row parse(String raw) {
    JsonNode event;
    try {
      event = raw == null ? null : JSON.readTree(raw);
    } catch (Exception e) {
      event = null;
    }
    if (event == null || !event.isObject()) {
      return Row.of(null, null, null, null, null, null, null, "not a JSON object");
    }
    String eventId = text(event, "event_id");
    String type = text(event, "type");
    String sku = text(event, "sku");
    Long ts = event.path("ts").canConvertToExactIntegral() ? event.path("ts").asLong() : null;
    Integer qty = event.path("qty").canConvertToExactIntegral() ? event.path("qty").asInt() : null;
    Double price = event.path("price").isNumber() ? event.path("price").asDouble() : null;
    String currency = text(event, "currency");
    return Row.of(eventId, type, sku, ts, qty, price, currency, error(eventId, type, sku, ts, qty, price, currency));
  }

  private static String text(JsonNode event, String field) {
    JsonNode value = event.get(field);
    return value != null && value.isTextual() ? value.asText() : null;
  }

  private static String error(
      String eventId, String type, String sku, Long ts, Integer qty, Double price, String currency) {
    if (eventId == null || eventId.isEmpty() || eventId.length() > 128) {
      return "event_id: missing or not 1..128 characters";
    }
    if (type == null || !type.matches("view|click|cart|purchase|return")) {
      return "type: missing or not one of view|click|cart|purchase|return";
    }
    if (sku == null || !SKU.matcher(sku).matches()) {
      return "sku: missing or not a valid SKU";
    }
    if (ts == null || ts < MIN_TS || ts >= MAX_TS) {
      return "ts: missing or not epoch milliseconds";
    }
    if (qty == null || qty < 0 || qty > 100_000) {
      return "qty: missing or not an integer in 0..100000";
    }
    if (price == null || price < 0 || price > 10_000_000 || price.isNaN()) {
      return "price: missing or not a number in 0..1e7";
    }
    if (currency == null || !CURRENCY.matcher(currency).matches()) {
      return "currency: missing or not 3 capitals";
    }
    return null;
  }
}
