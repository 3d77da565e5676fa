package mailer

import (
	"bytes"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"strings"
	texttemplate "text/template"
)

// Template is a named email template: Subject, HTML and Text are Go
// templates (html/template for HTML, text/template for Subject and Text),
// executed with the template data as dot, so a value is written
// {{.title}} and a nested one {{.link.target}}. Templates stored in the
// email_templates table have this shape.
//
// A key missing from the data renders as "<no value>" in Subject and Text
// and as nothing in HTML; guard optional values with {{with}} or {{if}}.
type Template struct {
	// Name identifies the template in errors.
	Name string
	// Subject is the subject line (text/template); its surrounding
	// white space is trimmed and line breaks become spaces.
	Subject string
	// HTML is the HTML part (html/template, so values are escaped); empty
	// means no HTML part.
	HTML string
	// Text is the plain-text part (text/template); empty means no text part.
	Text string
}

// EventNotification is the built-in "event_notification" template, modelled
// on authentik's email/event_notification.html: a title, the body, a
// key/value table of key_value, an optional link {target,label}, and an
// optional note naming the transport (source.from); its Text part carries
// the same content as plain text.
//
// Its data, as authentik's email transport builds it:
//
//	title      string            the event's action (or the body's first 75 characters)
//	body       string            the notification body; line breaks are kept
//	key_value  map[string]any    rows of the table, sorted by key (user_email, user_username, ...)
//	link       {target, label}   optional hyperlink
//	source     {from}            optional; the transport's name, shown to superusers
//
// Its Subject is the title alone; the email transport puts its
// email_subject_prefix in front.
var EventNotification = Template{
	Name:    "event_notification",
	Subject: `{{with .title}}{{.}}{{end}}`,
	HTML:    eventNotificationHTML,
	Text:    eventNotificationText,
}

const eventNotificationHTML = `<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{{with .title}}{{.}}{{end}}</title>
<style>
  body { margin: 0; padding: 0; background-color: #f3f3f3; font-family: Arial, Helvetica, sans-serif; color: #212124; }
  .wrapper { width: 100%; background-color: #f3f3f3; padding: 20px 0; }
  .content { max-width: 600px; background-color: #ffffff; border-radius: 3px; }
  h1 { font-size: 22px; font-weight: normal; margin: 20px; }
  .body { padding: 20px; white-space: pre-wrap; }
  .properties-table { border-collapse: collapse; margin: 0 20px 20px; }
  .properties-table td { padding: 4px 8px; border-bottom: 1px solid #e5e5e5; vertical-align: top; }
  .td-right { text-align: right; font-weight: bold; }
  .td-left { text-align: left; word-break: break-word; }
  .button { display: inline-block; padding: 10px 20px; background-color: #fd4b2d; color: #ffffff; text-decoration: none; border-radius: 3px; }
  .source { padding: 20px; font-size: 12px; color: #212124; }
</style>
</head>
<body>
<table class="wrapper" role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0">
<tr><td align="center">
<table class="content" role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0">
  <tr>
    <td align="center"><h1>{{with .title}}{{.}}{{end}}</h1></td>
  </tr>
  {{- with .body}}
  <tr>
    <td align="center" class="body">{{.}}</td>
  </tr>
  {{- end}}
  {{- with .key_value}}
  <tr>
    <td align="center">
      <table class="properties-table" width="100%">
        <tbody>
          {{- range $key, $value := .}}
          <tr>
            <td class="td-right">{{$key}}</td>
            <td class="td-left">{{$value}}</td>
          </tr>
          {{- end}}
        </tbody>
      </table>
    </td>
  </tr>
  {{- end}}
  {{- with .link}}{{with .target}}
  <tr>
    <td align="center" style="padding: 20px;">
      <a class="button" href="{{.}}">{{with $.link.label}}{{.}}{{else}}{{$.link.target}}{{end}}</a>
    </td>
  </tr>
  {{- end}}{{end}}
  {{- with .source}}{{with .from}}
  <tr>
    <td align="center" class="source">This email was sent from the notification transport <code>{{.}}</code>.</td>
  </tr>
  {{- end}}{{end}}
</table>
</td></tr>
</table>
</body>
</html>
`

const eventNotificationText = `{{with .title}}{{.}}
{{end}}
{{- with .body}}
{{.}}
{{end}}
{{- with .key_value}}
{{range $key, $value := .}}{{$key}}: {{$value}}
{{end}}{{end}}
{{- with .link}}{{with .target}}
{{with $.link.label}}{{.}}: {{end}}{{.}}
{{end}}{{end}}
{{- with .source}}{{with .from}}
This email was sent from the notification transport "{{.}}".
{{end}}{{end}}`

// Render executes t with data and returns the subject, the HTML part and the
// text part; a part whose template is empty comes back empty. A template
// with neither HTML nor Text is an error, as is a parse or execution error;
// errors are [*TemplateError]s, which name the template and the part.
func Render(t Template, data map[string]any) (subject, html, text string, err error) {
	if strings.TrimSpace(t.HTML) == "" && strings.TrimSpace(t.Text) == "" {
		return "", "", "", partErr(t.Name, "", errors.New("has neither an html nor a text part"))
	}
	if subject, err = renderText(t.Name, "subject", t.Subject, data); err != nil {
		return "", "", "", err
	}
	subject = strings.TrimSpace(oneLine(subject))
	if t.HTML != "" {
		if html, err = renderHTML(t.Name, t.HTML, data); err != nil {
			return "", "", "", err
		}
	}
	if t.Text != "" {
		if text, err = renderText(t.Name, "text", t.Text, data); err != nil {
			return "", "", "", err
		}
	}
	return subject, html, text, nil
}

func renderText(name, part, src string, data map[string]any) (string, error) {
	tpl, err := texttemplate.New(name + "." + part).Parse(src)
	if err != nil {
		return "", partErr(name, part, err)
	}
	var b bytes.Buffer
	if err := tpl.Execute(&b, data); err != nil {
		return "", partErr(name, part, err)
	}
	return b.String(), nil
}

func renderHTML(name, src string, data map[string]any) (string, error) {
	tpl, err := htmltemplate.New(name + ".html").Parse(src)
	if err != nil {
		return "", partErr(name, "html", err)
	}
	var b bytes.Buffer
	if err := tpl.Execute(&b, data); err != nil {
		return "", partErr(name, "html", err)
	}
	return b.String(), nil
}

// TemplateError reports a template that cannot be rendered: a part that
// does not parse or fails to execute, or a template with no body part. It is
// deterministic; rendering again fails the same way.
type TemplateError struct {
	// Template is the template's name.
	Template string
	// Part is "subject", "html" or "text"; empty when the template as a
	// whole is unusable.
	Part string
	// Err is the cause from text/template or html/template.
	Err error
}

func (e *TemplateError) Error() string {
	if e.Part == "" {
		return fmt.Sprintf("mailer: template %q: %v", e.Template, e.Err)
	}
	return fmt.Sprintf("mailer: template %q, %s part: %v", e.Template, e.Part, e.Err)
}

func (e *TemplateError) Unwrap() error { return e.Err }

func partErr(name, part string, err error) error {
	return &TemplateError{Template: name, Part: part, Err: err}
}
