package jsrt_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/jsrt"
	"github.com/heraldhq/herald/rules"
)

func TestActionGuard(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, expression string
		want             []string
	}{
		{"unknown device example", `const event = request.context.event;
if (!event || event.action !== "login") return false;
return (event.context.auth_method_args || {}).known_device === false;`, []string{"login"}},
		{"guard in a block", `if (request.context.event.action !== "model_updated") { return false; }
ak_create_event("x");
return true;`, []string{"model_updated"}},
		{"literal first", `if ("login" !== request.context.event.action) return;
return true;`, []string{"login"}},
		{"two actions", `const e = request.context.event;
if (e.action !== "login" && e.action !== "login_failed") return null;
return true;`, []string{"login", "login_failed"}},
		{"return expression", `return request.context.event.action === "login" && request.user.is_superuser;`, []string{"login"}},
		{"return either", `const ev = request.context.event;
return ev.action === "b" || ev.action === "a";`, []string{"a", "b"}},
		{"declarations of reads first", `const m = request.context.event.context.model || {};
let user = request.user;
var app = m.app;
return request.context.event.action === "model_created" && m.model_name === "user";`, []string{"model_created"}},
		{"safe reads before the action test", `const event = request.context.event;
const model = event.context.model || {};
if (!model.pk || event.action !== "model_deleted") return false;
return true;`, []string{"model_deleted"}},

		// Not analysable: the policy may do something for other actions.
		{"no guard", `return true;`, nil},
		{"side effect first", `ak_logger.info("seen");
if (request.context.event.action !== "login") return false;
return true;`, nil},
		{"call in a declaration", `const u = ak_user_by({username: "x"});
if (request.context.event.action !== "login") return false;
return true;`, nil},
		{"guard returns true", `if (request.context.event.action !== "login") return true;
return false;`, nil},
		{"guard with else", `if (request.context.event.action !== "login") return false; else ak_logger.info("x");
return true;`, nil},
		{"loose comparison", `if (request.context.event.action != "login") return false;
return true;`, nil},
		{"read that can throw first", `if (request.context.event.context.model.pk === 1 || request.context.event.action !== "login") return false;
return true;`, nil},
		{"request shadowed", `if (request.context.event.action !== "login") return false;
var request = {};
return true;`, nil},
		{"request passed bare", `const r = request;
if (r.context.event.action !== "login") return false;
return true;`, nil},
		{"negated guard", `if (request.context.event.action === "login") return false;
return true;`, nil},
		{"does not compile", `if (request.context.event.action !== "login") return false;
return (;`, nil},
		{"closes its function", "if (request.context.event.action !== \"nope\") return false;\nreturn false;\n}); (function () {\nreturn \"ran\";", nil},
		{"closes its function with a comma", "if (request.context.event.action !== \"nope\") return false;\nreturn false;\n}), (function () {\nreturn \"ran\";", nil},
		{"request shadowed through an escape", `if (request.context.event.action !== "login") return false;
function \u0072equest() {}
return true;`, nil},
		{"or in return without guard on the left", `return request.user.is_superuser || request.context.event.action === "login";`, nil},
	}
	pool := jsrt.New(jsrt.Config{Size: 1})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, c.want, pool.ActionGuard(&rules.Policy{Name: c.name, Kind: rules.KindExpression, Expression: c.expression}))
		})
	}
}
