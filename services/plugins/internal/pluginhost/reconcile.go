package pluginhost

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"

	pluginsv1 "github.com/heraldchat/herald/proto/herald/plugins/v1"
)

// reconcile asks the channel's adapter whether its provider has the
// message pd names, and returns the answer. It never sends the message and
// never answers FOUND without a provider message id.
func (h *Host) reconcile(ctx context.Context, pd *pluginsv1.Delivery) *pluginsv1.DeliverResponse {
	ctx, span := startSpan(ctx, pd, "plugins.Reconcile")
	defer span.End()

	d := toDelivery(pd)
	var res ReconcileResult
	adapterName := ""
	ch, ok := h.channels[d.Channel]
	switch {
	case !ok:
		res = ReconcileResult{
			Answer:      pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER,
			ErrorCode:   CodeUnknownChannel,
			Description: fmt.Sprintf("channel %q is not configured on this plugin host", d.Channel),
		}
	default:
		adapterName = ch.adapter.Name()
		r, can := ch.adapter.(Reconciler)
		if !can {
			res = ReconcileResult{
				Answer:      pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER,
				ErrorCode:   CodeCannotReconcile,
				Description: fmt.Sprintf("the %s adapter cannot ask its provider whether it has a message", adapterName),
			}
			break
		}
		start := time.Now()
		res = guardReconcile(call(h, ctx, d, adapterName, func(ctx context.Context) ReconcileResult { return r.Reconcile(ctx, d) },
			ReconcileResult{
				Answer:      pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR,
				ErrorCode:   CodeAdapterPanic,
				Description: "adapter panicked while asking its provider",
			},
			ReconcileResult{
				Answer:      pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR,
				ErrorCode:   CodeNoAnswer,
				Description: fmt.Sprintf("adapter did not return within %s after its deadline or cancellation", h.abandonAfter),
			}))
		h.metrics.callDuration.WithLabelValues(d.Channel, reconcileLabel(res.Answer)).Observe(time.Since(start).Seconds())
	}

	span.SetAttributes(
		attribute.String("herald.reconcile", res.Answer.String()),
		attribute.String("herald.adapter", adapterName),
	)
	if res.Answer != pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND && res.Answer != pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_NOT_FOUND {
		span.SetAttributes(attribute.String("herald.error_code", res.ErrorCode))
		span.SetStatus(otelcodes.Error, res.ErrorCode)
		h.logReconcileFailure(ctx, d, adapterName, res)
		h.metrics.errors.WithLabelValues(d.Channel, res.ErrorCode).Inc()
	}
	return &pluginsv1.DeliverResponse{
		RequestId:         pd.GetRequestId(),
		Reconcile:         res.Answer,
		ProviderMessageId: res.ProviderMessageID,
		RetryAfterMs:      res.RetryAfter.Milliseconds(),
		ErrorCode:         res.ErrorCode,
		ProviderCode:      res.ProviderCode,
		Description:       res.Description,
		Adapter:           adapterName,
	}
}

// guardReconcile is the silent-failure guard for reconcile answers: FOUND
// without a provider message id, and an answer the protocol does not
// define, become ERROR (asked again later, then dead-lettered).
func guardReconcile(res ReconcileResult) ReconcileResult {
	switch res.Answer {
	case pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_FOUND:
		if res.ProviderMessageID == "" {
			return ReconcileResult{
				Answer:      pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR,
				ErrorCode:   CodeFalseSuccess,
				Description: "adapter reported the message found without a provider message id",
			}
		}
		return res
	case pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_NOT_FOUND, pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER,
		pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR:
		return res
	default:
		return ReconcileResult{
			Answer:      pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_ERROR,
			ErrorCode:   CodeFalseSuccess,
			Description: fmt.Sprintf("adapter returned no valid reconcile answer (%d)", int32(res.Answer)),
		}
	}
}

// logReconcileFailure logs a reconcile answer other than FOUND or
// NOT_FOUND: ERROR when the message will be dead-lettered for it
// (CANNOT_ANSWER) or an adapter broke its contract, WARN otherwise. It
// never logs the recipient.
func (h *Host) logReconcileFailure(ctx context.Context, d *Delivery, adapter string, res ReconcileResult) {
	level := slog.LevelWarn
	if res.Answer == pluginsv1.ReconcileAnswer_RECONCILE_ANSWER_CANNOT_ANSWER ||
		res.ErrorCode == CodeFalseSuccess || res.ErrorCode == CodeAdapterPanic {
		level = slog.LevelError
	}
	h.logger.LogAttrs(ctx, level, "could not learn whether the provider has the message",
		slog.String("message_id", d.MessageID),
		slog.String("channel", d.Channel),
		slog.String("adapter", adapter),
		slog.String("answer", res.Answer.String()),
		slog.String("error_code", res.ErrorCode),
		slog.String("provider_code", res.ProviderCode),
		slog.String("description", res.Description),
	)
}

// reconcileLabel is "reconcile_found", "reconcile_not_found",
// "reconcile_cannot_answer" or "reconcile_error".
func reconcileLabel(a pluginsv1.ReconcileAnswer) string {
	return "reconcile_" + strings.ToLower(strings.TrimPrefix(a.String(), "RECONCILE_ANSWER_"))
}
