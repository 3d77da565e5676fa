package mailer_test

import (
	"fmt"

	"github.com/heraldhq/herald/mailer"
)

func ExampleRender() {
	subject, _, text, err := mailer.Render(mailer.EventNotification, map[string]any{
		"title":     "login",
		"body":      "alice logged in from a new device",
		"key_value": map[string]any{"user_username": "alice", "user_email": "alice@example.com"},
		"link":      map[string]any{"target": "https://auth.example.com/if/user/", "label": "Review"},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("Subject:", subject)
	fmt.Print(text)
	// Output:
	// Subject: login
	// login
	//
	// alice logged in from a new device
	//
	// user_email: alice@example.com
	// user_username: alice
	//
	// Review: https://auth.example.com/if/user/
}

func ExampleMailer_Send() {
	// Without an SMTP URL, messages are written as .eml files.
	m, err := mailer.New(mailer.Config{Dir: "data/mail"})
	if err != nil {
		panic(err)
	}
	fmt.Println(m.Backend())
	// A Send would write data/mail/<sha256 of the key>.eml:
	//
	//	err = m.Send(ctx, mailer.Message{
	//		Key:     "event/3f2c…/rule/welcome/user/42",
	//		To:      []string{"Alice <alice@example.com>"},
	//		Subject: "Welcome",
	//		Text:    "Hello Alice",
	//	})

	m, err = mailer.New(mailer.Config{SMTPURL: "smtp://user:secret@mail.example.com:587?tls=starttls"})
	if err != nil {
		panic(err)
	}
	fmt.Println(m.Backend())
	// Output:
	// file:data/mail
	// smtp://mail.example.com:587
}
